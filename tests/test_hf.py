"""HF interop: random-init small GPT2LMHeadModel / OpenAIGPTLMHeadModel (built from configs, no
downloads) give the same logits and loss through GPT.from_hf; export and directories round-trip."""
import pytest
import torch

from conftest import DEVICE
from fastgpt import GPT
from fastgpt.testing import check

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=100, n_positions=32, n_layer=2, n_head=4, n_embd=64)


def _assert(checks):
    bad = [str(c) for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def _randomize(hf):
    """O(1) activations, so a wrong GELU form (~5e-4 apart at |x| ~ 2) is far outside the tolerance."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2:  # Conv1D (in, out) and embeddings (rows, C): fan-in is the first dim / C
                p.normal_(0.0, (p.shape[0] if "h." in name else p.shape[1]) ** -0.5)
            elif "ln" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    return hf.eval()


def _hf_model(kind, act=None):
    if kind == "gpt2":
        cfg = transformers.GPT2Config(**SMALL, activation_function=act or "gelu_new", bos_token_id=0,
                                      eos_token_id=0)
        return _randomize(transformers.GPT2LMHeadModel(cfg))
    cfg = transformers.OpenAIGPTConfig(**SMALL, afn=act or "gelu")
    return _randomize(transformers.OpenAIGPTLMHeadModel(cfg))


def _parity(hf, ours, idx):
    """Our logits/loss (fp32) vs HF in float64 (ref_hi) and fp32 (ref_lp)."""
    with torch.no_grad():
        lp = hf.float()(idx, labels=idx)
        hi = hf.double()(idx, labels=idx)
        hf.float()
        logits, _ = ours(idx)
        _, loss = ours(idx[:, :-1], idx[:, 1:])  # HF shifts the labels inside
    return [check("logits", logits, hi.logits, lp.logits, torch.float32),
            check("loss", loss, hi.loss, lp.loss, torch.float32)]


@pytest.mark.parametrize("kind,act", [("gpt2", "gelu_new"), ("gpt2", "gelu"), ("gpt2", "gelu_fast"),
                                      ("gpt2", "gelu_pytorch_tanh"), ("openai-gpt", "gelu")])
def test_from_hf_logits_match(kind, act):
    hf = _hf_model(kind, act)
    ours = GPT.from_hf(hf, backend="reference")
    assert ours.config.norm == ("pre" if kind == "gpt2" else "post")
    assert ours.config.activation == ("gelu" if act == "gelu" and kind == "gpt2" else "gelu_tanh")
    idx = torch.randint(0, 100, (2, 24))
    _assert(_parity(hf, ours.eval(), idx))


def test_wrong_gelu_form_is_caught():
    """The tolerance is tight enough to see HF's activation naming go wrong."""
    hf = _hf_model("gpt2", "gelu_new")
    ours = GPT.from_hf(hf, backend="reference")
    for blk in ours.transformer.h:
        blk.approximate = "none"  # exact erf instead of gelu_new's tanh
    checks = _parity(hf, ours.eval(), torch.randint(0, 100, (2, 24)))
    assert not checks[0].ok


@pytest.mark.parametrize("kind", ["gpt2", "openai-gpt"])
def test_export_roundtrip(kind, tmp_path):
    hf = _hf_model(kind)
    ours = GPT.from_hf(hf)
    sd = ours.to_hf_state_dict()
    ref = hf.state_dict()
    assert sorted(sd) == sorted(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k]), k
    back = ours.to_hf().eval()  # a fresh HF model from hf_config() + the exported weights
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, hf(idx).logits)
    # an HF-format directory (config.json + model.safetensors), as save_pretrained writes it
    hf.save_pretrained(tmp_path)
    from_dir = GPT.from_hf(tmp_path)
    with torch.no_grad():
        assert torch.equal(from_dir(idx)[0], ours(idx)[0])
    assert torch.equal(GPT.from_pretrained(tmp_path)(idx)[0], ours(idx)[0])


def test_hf_dir_without_prefix_and_with_mask_buffers(tmp_path):
    """Original GPT-2 checkpoints: no 'transformer.' prefix, and causal-mask buffers 'h.N.attn.bias'."""
    import json

    from safetensors.torch import save_file
    hf = _hf_model("gpt2")
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    sd["h.0.attn.masked_bias"] = torch.tensor(-1e4)   # (older transformers saved it too)
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    ours = GPT.from_hf(tmp_path)
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=0, atol=1e-5)


def test_unsupported_hf_configs():
    with pytest.raises(ValueError, match="activation_function"):
        GPT.from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, activation_function="relu")))
    with pytest.raises(ValueError, match="n_inner"):
        GPT.from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, n_inner=100)))
    with pytest.raises(ValueError, match="afn"):
        GPT.from_hf(transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**SMALL, afn="relu")))
    with pytest.raises(TypeError, match="expected an HF model"):
        GPT.from_hf(42)
    # (a mutation audit, 2026-11-30) these were untested: a per-layer attention scale would load with wrong
    # logits; an n_inner that spells out 4 * n_embd is no other architecture; an untied head is refused
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True is not supported"):
        GPT.from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL,
                                                                         scale_attn_by_inverse_layer_idx=True)))
    assert GPT.from_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, n_inner=256))).config.n_embd == 64
    hf = _hf_model("gpt2")
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1)
    with pytest.raises(ValueError, match="lm_head.weight differs from the token embedding"):
        GPT.from_hf(hf)


def test_from_hf_on_device():
    hf = _hf_model("gpt2").to(DEVICE)
    ours = GPT.from_hf(hf, backend="reference").to(DEVICE)
    idx = torch.randint(0, 100, (1, 8), device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0].float(), hf(idx).logits.float(), rtol=1e-4, atol=1e-4)


def test_export_refuses_bias_false_and_byte_vocab_has_no_gpt2_eos():
    """A bias=False model cannot be an HF GPT: to_hf_state_dict says so (it returned a dict without biases,
    which HF loads only non-strictly, keeping its random ones); a vocabulary smaller than GPT-2's gets no
    end-of-text id (GPT2Config's 50256 lay outside it: HF warned, and generate never stopped on it)."""
    from fastgpt import GPTConfig
    nobias = GPT(GPTConfig.preset("tiny", vocab_size=256, bias=False))
    with pytest.raises(ValueError, match="to_hf_state_dict: .* bias=False"):
        nobias.to_hf_state_dict()
    c = GPT(GPTConfig.preset("tiny", vocab_size=256)).hf_config()
    assert (c.bos_token_id, c.eos_token_id) == (None, None)
    assert GPT(GPTConfig.preset("tiny", vocab_size=50257)).hf_config().eos_token_id == 50256
    assert GPT(GPTConfig.preset("tiny", vocab_size=50256)).hf_config().eos_token_id is None   # (its last id: 50255)
    # (a mutation audit) the export names exact-erf GELU "gelu" and carries the dropout rate
    c = GPT(GPTConfig.preset("tiny", vocab_size=256, activation="gelu", dropout=0.0)).hf_config()
    assert c.activation_function == "gelu" and c.resid_pdrop == c.attn_pdrop == c.embd_pdrop == 0.0


def test_task_heads_dropout_rates_and_exact_gelu_post_ln_are_named():
    """An HF model with a task head (DoubleHeads, SequenceClassification) is one line saying what to pass
    (its keys came out as transformer.multiple_choice_head...); attention / embedding dropout rates that
    differ from resid_pdrop are a warning (fastgpt keeps one rate); a post-LN exact-erf model has no HF
    counterpart, for to_hf_state_dict as for hf_config."""
    from fastgpt import GPTConfig
    cfg = transformers.GPT2Config(**SMALL, bos_token_id=0, eos_token_id=0)
    for cls in (transformers.GPT2DoubleHeadsModel, transformers.GPT2ForSequenceClassification):
        hf = cls(cfg)
        with pytest.raises(ValueError, match=r"task heads .* pass the model's \.transformer"):
            GPT.from_hf(hf)
        assert GPT.from_hf(hf.transformer).config.n_layer == SMALL["n_layer"]
    with pytest.warns(UserWarning, match="attn_pdrop 0.3 and embd_pdrop 0.5 are not kept"):
        m = GPT.from_hf(transformers.GPT2LMHeadModel(
            transformers.GPT2Config(**SMALL, resid_pdrop=0.0, attn_pdrop=0.3, embd_pdrop=0.5)))
    assert m.config.dropout == 0.0
    post_erf = GPT(GPTConfig.preset("tiny", vocab_size=256, norm="post", activation="gelu"))
    with pytest.raises(ValueError, match="to_hf_state_dict: HF OpenAI GPT has only the tanh GELU"):
        post_erf.to_hf_state_dict()


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_export_keeps_the_layer_norm_eps(norm):
    """hf_config carries layer_norm_eps (every other HF test uses the default 1e-5; a mutation review,
    2026-11-28, found it unguarded): the exported model's logits equal ours at eps = 0.1."""
    from fastgpt import GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64, norm=norm, layer_norm_eps=0.1),
            backend="reference").eval()
    assert m.hf_config().layer_norm_epsilon == 0.1
    idx = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m.to_hf().eval()(idx).logits, m(idx)[0], rtol=1e-4, atol=1e-4)
    assert GPT.from_hf(m.to_hf()).config.layer_norm_eps == 0.1   # and back (fixed 1e-5: passed)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """huggingface_hub.snapshot_download as a stand-in (no network here): repo id -> a local folder, each call
    recorded with the files it asked for."""
    hub_hf = pytest.importorskip("huggingface_hub")
    repos, calls = {}, []

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, list(allow_patterns or []), local_files_only))
        if repo_id not in repos and local_files_only:   # (huggingface_hub 0.x-1.x's words)
            raise RuntimeError("Cannot find an appropriate cached snapshot folder for the specified revision on the "
                               "local disk and outgoing traffic has been disabled. To enable repo look-ups and "
                               "downloads online, pass 'local_files_only=False' as input.")
        if repo_id not in repos:
            raise RuntimeError(f"Repository Not Found for url: https://huggingface.co/api/models/{repo_id}\nmore")
        import fnmatch
        import shutil
        out = tmp_path / "snap" / repo_id.replace("/", "--") / str(len(calls))
        out.mkdir(parents=True)
        for f in repos[repo_id].iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, out / f.name)
        return str(out)

    monkeypatch.setattr(hub_hf, "snapshot_download", snapshot_download)
    return repos, calls


def test_hub_ids_load_through_the_hub(hub, tmp_path, capsys):
    """GPT.from_hf("gpt2") and fastgpt.sample / finetune --init with a Hub id: its config and weights are fetched
    (safetensors only; pytorch_model.bin when a repo has no safetensors) and loaded as a local HF folder."""
    from fastgpt import finetune as FT
    from fastgpt import sample
    repos, calls = hub
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**SMALL, "vocab_size": 256}, bos_token_id=0,
                                                               eos_token_id=0))
    _randomize(hf)
    hf.save_pretrained(tmp_path / "st")                              # model.safetensors
    (tmp_path / "bin").mkdir()                                       # pytorch_model.bin only (an older repo)
    (tmp_path / "bin" / "config.json").write_bytes((tmp_path / "st" / "config.json").read_bytes())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    repos.update({"org/tiny-gpt2": tmp_path / "st", "tiny-bin": tmp_path / "bin"})
    idx = torch.randint(0, 256, (2, 16))
    for repo in ("org/tiny-gpt2", "tiny-bin"):
        ours = GPT.from_hf(repo, backend="reference")
        _assert(_parity(hf, ours, idx))
    safetensors = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    assert calls == [("org/tiny-gpt2", ["config.json"], False), ("org/tiny-gpt2", safetensors, False),
                     ("tiny-bin", ["config.json"], False), ("tiny-bin", safetensors, False),
                     ("tiny-bin", ["config.json", "pytorch_model.bin"], False)]
    assert sample.main(["org/tiny-gpt2", "--max-new-tokens", "3", "--device", "cpu", "--prompt", "ab"]) == 0
    assert "3 tokens" in capsys.readouterr().err
    model, tok, _, meta = FT.load_init("org/tiny-gpt2", FT.FinetuneConfig(offline=True), "cpu")
    assert tok == "byte" and meta is None and torch.equal(model.transformer.wpe.weight, ours.transformer.wpe.weight)
    assert calls[-1][2] is True   # --offline: the HF cache only


def test_hub_id_errors_are_one_line(hub, tmp_path, capsys, monkeypatch):
    from fastgpt import finetune as FT
    from fastgpt import sample
    _, calls = hub
    with pytest.raises(FileNotFoundError) as e:
        GPT.from_hf("org/nope")
    assert str(e.value) == ("from_hf: org/nope: no such file or folder, nor a model the Hugging Face Hub gives "
                            "(RuntimeError: Repository Not Found for url: https://huggingface.co/api/models/org/nope)")
    monkeypatch.chdir(tmp_path)   # (relative paths: the README's first command writes out/ckpt_0000500.pt)
    for path in ("a/b/c", "../up", str(tmp_path / "missing"), "out/ckpt_0000500.pt"):   # not Hub ids: not asked
        with pytest.raises(FileNotFoundError, match=f"^from_hf: {path}: no such file or folder$"):
            GPT.from_hf(path)
    assert [c[0] for c in calls] == ["org/nope"]
    # a model fastgpt cannot load is refused from its config.json, before any weights are fetched
    repos, _ = hub
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "llama" / "model.safetensors").write_bytes(b"never fetched")
    repos["org/llama"] = tmp_path / "llama"
    with pytest.raises(ValueError, match="^from_hf: org/llama: .*'llama'"):
        GPT.from_hf("org/llama")
    assert calls[-1] == ("org/llama", ["config.json"], False)
    monkeypatch.setenv("FASTGPT_OFFLINE", "1")   # the cache only; the message says so
    with pytest.raises(FileNotFoundError, match="nor a model the Hugging Face cache has \\(offline\\)") as e:
        GPT.from_hf("org/nope")
    # (a review) its first sentence whole: it was cut at 160 characters, "To enable repo look-ups a)"
    assert str(e.value).endswith("on the local disk and outgoing traffic has been disabled)"), e.value
    assert calls[-1][2] is True
    monkeypatch.delenv("FASTGPT_OFFLINE")
    with pytest.raises(SystemExit) as ex:
        sample.main(["org/nope", "--device", "cpu"])
    err = capsys.readouterr().err
    assert ex.value.code == 1 and err.count("\n") == 1 and "org/nope: no such file or folder, nor a model the " \
        "Hugging Face Hub gives (RuntimeError: Repository Not Found" in err and "Hub id such as gpt2" in err
    with pytest.raises(FT.RunError, match=r"^--init org/nope: no such file or folder, nor a model the Hugging Face"):
        FT.load_init("org/nope", FT.FinetuneConfig(), "cpu")


# ----------------------------------------------------------- from a mutation audit of sample.py (2026-11-30)

def test_sample_a_hub_model_fastgpt_cannot_load_is_one_line_exit_1(hub, tmp_path, capsys):
    """Mutant S13: load() catching only hub_folder's FileNotFoundError: a Hub id whose config.json names a model
    fastgpt does not load (hub_folder's ValueError, raised before any weights are fetched) was a traceback."""
    from fastgpt import sample
    repos, calls = hub
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    repos["org/llama"] = tmp_path / "llama"
    with pytest.raises(SystemExit) as e:
        sample.main(["org/llama", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("python -m fastgpt.sample: error: org/llama: model_type 'llama' is not supported"), err
    assert calls == [("org/llama", ["config.json"], False)]


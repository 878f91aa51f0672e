"""fastgpt benchmarks: one file per op family + block + train step, and one runner (run.py)."""

"""Stage orchestration: the `build` job (build.py) and re-training (retrain.py)."""

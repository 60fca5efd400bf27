"""The jobs: `build` as stages (build.py) run by one runner (stages.py) over one build folder
(folder.py), with typed settings (settings.py) checked before the first stage (checks.py);
re-training (retrain.py). docs/architecture.md draws it."""

import sys
from pathlib import Path

# handmade_graphs.py sits next to the tests; tests/ has no __init__.py.
sys.path.insert(0, str(Path(__file__).parent))

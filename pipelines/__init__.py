"""Pipeline stages and experiment configs (short YAML overrides of the defaults)."""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def default_config_path() -> Path:
    """The embedded default: ComplEx + MetaSD on UMLS, CPU-sized."""
    return CONFIG_DIR / "umls_metasd.yaml"

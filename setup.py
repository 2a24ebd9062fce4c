"""metasd-dgl: knowledge-graph completion on DGL with MetaSD compression."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Shipped files: they stay in the repository's top-level folders and are copied
# into the built package as metasd_dgl/_shipped/<name>/ (read by
# metasd_dgl.resources, which falls back to these folders in a checkout).
SHIPPED = {
    "configs": ("pipelines/configs", ["*.yaml"]),
    # The four small benchmark archives (about 300 kB) make `--dataset kinship` work offline after
    # `pip install`; FB15k-237 and WN18RR stay in the repository (metasd_dgl.resources.SHIPPED_ARCHIVES).
    "datasets": ("datasets", ["README.md", "toy/*.txt", "kg/README.md", "kg/SHA256SUMS", "kg/nations.tar.gz",
                              "kg/kinship.tar.gz", "kg/umls.tar.gz", "kg/codex-s.tar.gz"]),
}


class BuildWithShippedFiles(build_py):
    """build_py that also copies the SHIPPED files into the built package."""

    def run(self):
        super().run()
        for name, (folder, patterns) in SHIPPED.items():
            files = [f for pattern in patterns for f in sorted((HERE / folder).glob(pattern))]
            if not files:
                raise FileNotFoundError(f"{HERE / folder}: no {patterns} to ship")
            for src in files:
                dst = Path(self.build_lib) / "metasd_dgl" / "_shipped" / name / src.relative_to(HERE / folder)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


setup(
    name="metasd-dgl",
    version="0.1.0",
    description="Knowledge-graph completion on DGL and PyTorch with MetaSD "
    "(self-distillation with meta learning and dynamic pruning).",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.13",
    packages=find_packages(include=["metasd_dgl", "metasd_dgl.*"]),
    cmdclass={"build_py": BuildWithShippedFiles},
    install_requires=[
        # DGL 2.1.0 is the last Linux wheel on PyPI; its graphbolt library is
        # built per torch version and imports only with torch <= 2.2.1.
        "torch>=2.0,<=2.2.1",
        "dgl>=2.0,<2.2",
        "numpy>=1.22,<2",
        "torchdata==0.7.1",
        "setuptools<70",
        "pandas",
        # dgl 2.1.0 imports pydantic at `import dgl` (dgl/graphbolt/impl/
        # ondisk_metadata.py) but does not declare it; no code here imports it.
        "pydantic",
        "dglke==0.1.2",
        "scikit-learn>=1.2",
        "click>=8.1",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "safetensors>=0.4",
        "optuna>=4.0",  # metasd-dgl tune (studies in SQLite: sqlalchemy, alembic)
    ],
    extras_require={
        "test": ["pytest>=7", "pykeen==1.11.1", "tensorboard==2.21.0"],
        "tensorboard": ["tensorboard==2.21.0"],
        "bench": ["pykeen==1.11.1", "psutil"],
    },
    entry_points={"console_scripts": ["metasd-dgl=metasd_dgl.cli:main"]},
)

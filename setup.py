"""metasd-dgl: knowledge-graph completion on DGL with MetaSD compression."""
from setuptools import find_packages, setup

setup(
    name="metasd-dgl",
    version="0.1.0",
    description="Knowledge-graph completion on DGL and PyTorch with MetaSD "
    "(self-distillation with meta learning and dynamic pruning).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.13",
    packages=find_packages(include=["metasd_dgl", "metasd_dgl.*", "pipelines", "datasets"]),
    package_data={"pipelines": ["configs/*.yaml"], "datasets": ["toy/*.txt", "README.md"]},
    install_requires=[
        # DGL 2.1.0 is the last Linux wheel on PyPI; its graphbolt library is
        # built per torch version and imports only with torch <= 2.2.1.
        "torch>=2.0,<=2.2.1",
        "dgl>=2.0,<2.2",
        "numpy>=1.22,<2",
        "torchdata==0.7.1",
        "setuptools<70",
        "pandas",
        "pydantic",
        "dglke==0.1.2",
        "scikit-learn>=1.2",
        "click>=8.1",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": ["pytest>=7", "pykeen==1.11.1", "tensorboard==2.21.0"],
        "tensorboard": ["tensorboard==2.21.0"],
        "bench": ["pykeen==1.11.1", "psutil"],
    },
    entry_points={"console_scripts": ["metasd-dgl=metasd_dgl.cli:main"]},
)

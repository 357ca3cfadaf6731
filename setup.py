"""research: one JAX/Flax codebase for BERT, GPT, T5/BART-style pretrained transformers.

Exact versions that reproduce the README figures live in constraints.txt
(`pip install -c constraints.txt -e .[test]`); the ranges below are what the code supports.
"""
from setuptools import find_packages, setup

setup(
    name="research",
    version="0.1.0",
    description="Why is BERT not GPT? Encoders, decoders and encoder-decoders in one JAX/Flax codebase.",
    python_requires=">=3.10",
    packages=find_packages(include=["research", "research.*", "launch", "launch.*"]),
    package_data={"research.data": ["assets/*", "assets/*/*"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "sentencepiece>=0.2.3,<0.3",
        "absl-py>=2.5,<3",
        "ml_collections>=1.1,<2",
        "numpy>=2.4,<3",
        "tensorboardX>=2.6,<3",
        # Seq2seq task metrics (corpus BLEU, chrF) with their reproducibility signatures.
        "sacrebleu>=2.4,<3",
    ],
    extras_require={
        # HF checkpoint import/export (WordPiece / byte-level BPE vocabularies, safetensors).
        "convert": ["safetensors>=0.8,<0.9", "tokenizers>=0.23,<0.24"],
        # Sweep collection plots.
        "plot": ["matplotlib>=3.11,<4"],
        # Only research/convert/make_fixtures.py (regenerates tests/fixtures); never imported
        # by the package or the tests.
        "dev": ["torch==2.13.0", "transformers>=5,<6"],
        # Only `--peers` of research/benchmarks (HF Flax and PyTorch training steps and
        # `generate` timed beside ours); never imported otherwise. transformers 4.57 is the last
        # release with Flax classes; it needs tokenizers <= 0.23.0 and huggingface_hub < 1, so
        # this extra installs into its own venv with constraints-bench.txt (`make bench-peers`).
        "bench": ["torch==2.13.0", "transformers==4.57.6"],
        "test": [
            "pytest>=9,<10",
            "pytest-xdist>=3.8,<4",  # `make test` runs test files on every core
            "safetensors>=0.8,<0.9",
            "tokenizers>=0.23,<0.24",
            "matplotlib>=3.11,<4",
        ],
    },
)

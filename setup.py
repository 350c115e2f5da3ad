from setuptools import find_packages, setup

# torch is pinned and installed first (see README / .ci/run): a bare requirement on
# torch here would let pip pull a newer CUDA build.  Keep this list in step with
# constraints.txt.
# The distribution is "rrg-cxr" ("rrg" on the public index is another project); the command stays `rrg`.
setup(
    name="rrg-cxr",
    version="0.1.0",
    description="Distributed training of chest X-ray report-generation models",
    python_requires=">=3.10",
    packages=find_packages(include=["configs", "launcher*", "trainer*", "modeling*", "shards*", "cluster*"]),
    include_package_data=True,
    install_requires=[
        "torch==2.13.0",
        "deepspeed==0.19.8",
        "transformers==5.23.0",
        "peft==0.21.2",
        "accelerate==1.15.0",
        "safetensors==0.8.0",
        "tokenizers",
        "sentencepiece==0.2.3",  # Llama/Vicuna/Llama-2 ship tokenizer.model (SentencePiece) only
        "protobuf==7.36.2",  # transformers needs it to read a SentencePiece model (else a misleading tiktoken error)
        "webdataset==1.0.2",
        "pillow==13.0.0",
        "ray[train]==2.60.0",
        "wandb==0.31.0",
        "pyyaml==6.0.3",
        "numpy",
        "tqdm",
        "pydicom==3.0.2",
        "pylibjpeg==2.1.0",
        "pylibjpeg-openjpeg==2.6.0",
        "jsonschema==4.26.0",  # rrg submit k8s: RayJob manifests checked against KubeRay's CRD schema
        "s3fs==2026.9.0",  # s3:// shards and checkpoints (fsspec)
        "nltk==3.10.4",  # Porter stemmer of rouge_score's ROUGE (rouge_1/2/l_f1), pure Python; no data download
    ],
    # the shipped run and dataset configs and the KubeRay schema travel in the wheel (tests/test_install.py)
    package_data={"cluster": ["kuberay/*"], "configs": ["*.yaml", "datasets/*.yaml"]},
    extras_require={
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "pycocoevalcap==1.2", "moto[server]==5.2.5"],
    },
    entry_points={"console_scripts": ["rrg=launcher.cli:main"]},
)

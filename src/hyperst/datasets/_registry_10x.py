"""Where the 10x Genomics Visium samples come from: pinned URLs and SHA-256 checksums, and nothing else.

Each sample ``S`` needs three files of 10x's public dataset listing, stored in the cache under the names
below (the cache names are hyperst's; the URLs are 10x's):

=======================================  ============================================================================
cache name                               URL under ``https://cf.10xgenomics.com/samples/spatial-exp/<version>/<S>/``
=======================================  ============================================================================
``<S>/filtered_feature_bc_matrix.h5``    ``<S>_filtered_feature_bc_matrix.h5`` (spots x genes counts)
``<S>/spatial.tar.gz``                   ``<S>_spatial.tar.gz`` (positions, scale factors, hires/lowres images)
``<S>/image.<ext>``                      ``<S>_image.<ext>`` (the full-resolution H&E image given to Space Ranger)
=======================================  ============================================================================

``<version>`` is the Space Ranger version of the release (1.1.0 or 1.3.0). The scverse project mirrors the same
files at :data:`VISIUM_10X_MIRROR_URL`; hyperst tries it only when 10x's server fails, with the same checksums.

Provenance of the checksums: hyperst's maintainers could not download these files, so every SHA-256 below is
copied from squidpy's dataset registry, ``src/squidpy/datasets/datasets.yaml`` in https://github.com/scverse/squidpy
at commit ``1f0ef4e09a18834cb173b5f114fea7aa816717ea`` (also shipped in squidpy 1.8.2), where each hash is listed
for both the scverse mirror and the 10x URL (``fallback_url``) of the file. squidpy's earlier
``src/squidpy/datasets/_hash_registry.py`` (commit ``76caa2b876222d35a9c780a961556d5877364964``) keyed hashes by
``cf.10xgenomics.com`` URLs, and they equal the mirror's for every file both list, so the mirror holds 10x's bytes.
A file is only ever downloaded against such a checksum: samples with a file that has none are listed but refused.
"""

from __future__ import annotations

__all__ = [
    "VISIUM_10X_BASE_URL",
    "VISIUM_10X_HASH_SOURCE",
    "VISIUM_10X_MIRROR_URL",
    "VISIUM_10X_SAMPLES",
    "VISIUM_10X_SHA256",
    "visium_10x_files",
    "visium_10x_registry",
    "visium_10x_url",
    "visium_10x_verified_samples",
]

VISIUM_10X_BASE_URL = "https://cf.10xgenomics.com/samples/spatial-exp/"
#: The scverse mirror of the same files (squidpy's ``s3_base_url`` + ``10x_genomics/``), tried second.
VISIUM_10X_MIRROR_URL = "https://exampledata.scverse.org/squidpy/10x_genomics/"
VISIUM_10X_HASH_SOURCE = (
    "https://github.com/scverse/squidpy/blob/1f0ef4e09a18834cb173b5f114fea7aa816717ea/"
    "src/squidpy/datasets/datasets.yaml"
)

#: Human H&E Visium samples: Space Ranger release, full-resolution image suffix, and what the tissue is.
VISIUM_10X_SAMPLES: dict[str, tuple[str, str, str]] = {
    "V1_Human_Lymph_Node": ("1.1.0", "tif", "human lymph node, fresh frozen"),
    "V1_Breast_Cancer_Block_A_Section_1": ("1.1.0", "tif", "human breast cancer (block A, section 1), fresh frozen"),
    "Visium_FFPE_Human_Breast_Cancer": ("1.3.0", "tif", "human invasive ductal breast carcinoma, FFPE"),
    "Visium_FFPE_Human_Prostate_Cancer": ("1.3.0", "tif", "human prostate adenocarcinoma, FFPE"),
    "Visium_FFPE_Human_Normal_Prostate": ("1.3.0", "jpg", "human normal prostate, FFPE"),
}

#: SHA-256 of every file hyperst may download, by cache name (source: :data:`VISIUM_10X_HASH_SOURCE`).
#: ``Visium_FFPE_Human_Normal_Prostate/image.jpg`` has no published checksum (``null`` upstream), so that
#: sample is refused.
VISIUM_10X_SHA256: dict[str, str] = {
    "V1_Human_Lymph_Node/filtered_feature_bc_matrix.h5": (
        "86fd533eb907450e7125b9820183a0ca73776eeafcc5eddae5695b6aabfd9139"
    ),
    "V1_Human_Lymph_Node/spatial.tar.gz": "812808883366ff9623dc8354847a7211b0d922b2bfc4c9359d6e12e993ea6a73",
    "V1_Human_Lymph_Node/image.tif": "19462aa8f74ed6032738251e2f56931be9047de58bab6ca0373af385aae2ff03",
    "V1_Breast_Cancer_Block_A_Section_1/filtered_feature_bc_matrix.h5": (
        "b3cbb6ead60afad848ebcc07a34835613d9d2d79e416ad8300b210d9de584b65"
    ),
    "V1_Breast_Cancer_Block_A_Section_1/spatial.tar.gz": (
        "415530a9d31172f63fd358d5d1cefb0798698ef9c0e614f52825894cd45c61bf"
    ),
    "V1_Breast_Cancer_Block_A_Section_1/image.tif": (
        "73a94ca956d1b5c027dcaf1ac42c15fed4d4a12eefee4b4b597e62f34cc5959e"
    ),
    "Visium_FFPE_Human_Breast_Cancer/filtered_feature_bc_matrix.h5": (
        "64321f603f7200b0bedffbe353c04dde72bbe7c7be7390e503d955aa9b2584c5"
    ),
    "Visium_FFPE_Human_Breast_Cancer/spatial.tar.gz": (
        "2937fcc44b7adee70f162a9e09857410dcf22eed89a3e3187950dfc1574fea14"
    ),
    "Visium_FFPE_Human_Breast_Cancer/image.tif": "b3fbbdb5006769ef7d2b614171e208b6caf901bde52272a02da6e3d019626ce0",
    "Visium_FFPE_Human_Prostate_Cancer/filtered_feature_bc_matrix.h5": (
        "08fb4185da5ac375ab3f4782744752bf3aa23fedbe93d0882aaa9fa0afde9abd"
    ),
    "Visium_FFPE_Human_Prostate_Cancer/spatial.tar.gz": (
        "3eec0e63de718a51afd1d11dea3a1db926009399937f93384d14c81f52e37202"
    ),
    "Visium_FFPE_Human_Prostate_Cancer/image.tif": ("c5e967a1c09deef5a1ef0a60b00c823d2daa3640b50ee3cb6683f61c254299f7"),
    "Visium_FFPE_Human_Normal_Prostate/filtered_feature_bc_matrix.h5": (
        "a62e3f01b30eb0cbf524dbaafb52c086bc2710ff7461284b0b3778ca0e5a355c"
    ),
    "Visium_FFPE_Human_Normal_Prostate/spatial.tar.gz": (
        "cd9f2616ed155b8dcdd68d0780eda5dd24f1d440b02cfd8f5c5bd1bb6481000e"
    ),
}


def visium_10x_files(sample: str) -> dict[str, str]:
    """Cache names of a sample's ``"counts"``, ``"spatial"`` and ``"image"`` files."""
    ext = VISIUM_10X_SAMPLES[sample][1]
    return {
        "counts": f"{sample}/filtered_feature_bc_matrix.h5",
        "spatial": f"{sample}/spatial.tar.gz",
        "image": f"{sample}/image.{ext}",
    }


def visium_10x_url(fname: str, *, mirror: bool = False) -> str:
    """URL of the file stored in the cache as ``fname``: 10x's, or the scverse mirror's with ``mirror=True``."""
    sample, name = fname.split("/", 1)
    upstream = f"{sample}_{name}"
    if mirror:
        return f"{VISIUM_10X_MIRROR_URL}{sample}/{upstream}"
    return f"{VISIUM_10X_BASE_URL}{VISIUM_10X_SAMPLES[sample][0]}/{sample}/{upstream}"


def visium_10x_verified_samples() -> list[str]:
    """List the samples whose three files all have a pinned checksum, sorted."""
    return sorted(s for s in VISIUM_10X_SAMPLES if all(f in VISIUM_10X_SHA256 for f in visium_10x_files(s).values()))


def visium_10x_registry(*, mirror: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Build the pooch ``registry`` (cache name to ``"sha256:<hex>"``) and ``urls`` (cache name to URL)."""
    registry = {fname: f"sha256:{digest}" for fname, digest in VISIUM_10X_SHA256.items()}
    urls = {fname: visium_10x_url(fname, mirror=mirror) for fname in VISIUM_10X_SHA256}
    return registry, urls

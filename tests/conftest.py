"""Shared fixtures: hand-built slides, the synthetic dataset, and the real HER2ST sections when present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import torch

SHARED = Path(os.environ.get("HYPERST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HER2ST = SHARED / "data" / "her2st"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True, scope="session")
def _quiet_progress():
    """No progress bars in tests (session-wide, so module-scoped fixtures that fit models see it too)."""
    import hyperst

    old = hyperst.settings.progress_bar
    hyperst.settings.progress_bar = False
    yield
    hyperst.settings.progress_bar = old


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny torch workloads on one intra-op thread.

    On a small shared machine a second thread only adds synchronisation (seconds instead of milliseconds per
    step). numba's first parallel call (scanpy's, inside `fit`) resets OpenMP's thread count, so it runs first.
    """
    import numba
    import torch

    numba.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Cut pooch off the network; every attempted download is recorded (the list returned) and refused.

    Modules that load datasets turn it on for each test with ``pytestmark = pytest.mark.usefixtures("downloads")``.
    """
    import pooch

    calls: list[str] = []

    def refuse(self, url, output_file, pup, check_only=False):
        calls.append(url)
        msg = f"network access in tests: {url}"
        raise RuntimeError(msg)

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", refuse)
    return calls


def random_pixels(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A seeded ``(batch, 3, size, size)`` uint8 torch tensor of random pixels."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def make_slide(
    image: np.ndarray,
    centres: np.ndarray,
    radius: float,
    *,
    cs: str = "sample_1",
    image_transform=None,
    shapes_transform=None,
    n_genes: int = 5,
    seed: int = 0,
    scale_factors: list[int] | None = None,
):
    """A SpatialData slide: ``(c, y, x)`` uint8 image, spot circles at ``centres`` (x, y), a counts table."""
    import anndata as ad
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    rng = np.random.default_rng(seed)
    n = len(centres)
    img = Image2DModel.parse(
        DataArray(image, dims=("c", "y", "x")),
        transformations={cs: image_transform or Identity()},
        scale_factors=scale_factors,
    )
    ids = np.arange(n) + 100  # instance ids distinct from row positions
    shapes = ShapesModel.parse(
        np.asarray(centres, dtype=float),
        geometry=0,
        radius=np.full(n, float(radius)),
        index=pd.Index(ids),
        transformations={cs: shapes_transform or Identity()},
    )
    counts = rng.poisson(3.0, size=(n, n_genes)).astype(np.float32)
    obs = pd.DataFrame({"spot_id": ids, "region": pd.Categorical([cs] * n)}, index=[f"spot{i}" for i in ids])
    adata = ad.AnnData(counts, obs=obs)
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    table = TableModel.parse(adata, region=cs, region_key="region", instance_key="spot_id")
    return SpatialData(images={f"{cs}_full_image": img}, shapes={cs: shapes}, tables={"table": table})


def hex_centres(n_rows: int, n_cols: int, pitch: float, origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Centres of a Visium-like hexagonal lattice with centre-to-centre ``pitch``."""
    pts = []
    for r in range(n_rows):
        for c in range(n_cols):
            pts.append((origin[0] + c * pitch + (r % 2) * pitch / 2, origin[1] + r * pitch * np.sqrt(3) / 2))
    return np.asarray(pts)


def square_centres(n_rows: int, n_cols: int, pitch: float, origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Centres of a legacy-ST-like square lattice."""
    yy, xx = np.mgrid[0:n_rows, 0:n_cols]
    return np.column_stack([origin[0] + xx.ravel() * pitch, origin[1] + yy.ravel() * pitch]).astype(float)


def write_cellranger_h5(table, path: Path) -> None:
    """Write a table's raw counts as Cell Ranger's / Space Ranger's HDF5 matrix.

    The layout the readers open: ``matrix/`` holds the CSC of genes x barcodes (``data``, ``indices``,
    ``indptr``, ``shape``, ``barcodes``) and ``matrix/features/`` the gene ids, names, feature types and genome.
    """
    import h5py
    from scipy import sparse

    x = sparse.csr_matrix(table.X)  # barcodes x genes as CSR is genes x barcodes as CSC
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(table.obs_names, dtype="S")
        m["data"] = x.data.astype(np.int32)
        m["indices"] = x.indices.astype(np.int64)
        m["indptr"] = x.indptr.astype(np.int64)
        m["shape"] = np.array([table.n_vars, table.n_obs], dtype=np.int32)
        feats = m.create_group("features")
        feats["_all_tag_keys"] = np.array(["genome"], dtype="S")
        for key, values in (
            ("id", table.var["gene_ids"]),
            ("name", table.var_names),
            ("feature_type", table.var["feature_types"]),
            ("genome", table.var["genome"]),
        ):
            feats[key] = np.array(values, dtype="S")


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    if not (HER2ST / "C3.h5ad").exists():
        pytest.skip(f"real data not found at {HER2ST} (needs ../shared/data)")
    return HER2ST


def her2st_slide(section: str, root: Path = HER2ST):
    """Build a SpatialData from a HER2ST section's h5ad and full-resolution JPEG, as a user would."""
    import anndata as ad
    from PIL import Image
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity
    from xarray import DataArray

    Image.MAX_IMAGE_PIXELS = None
    adata = ad.read_h5ad(root / f"{section}.h5ad")
    rgb = np.asarray(Image.open(root / "images" / f"{section}.jpg").convert("RGB"))
    diameter = adata.uns["spatial"][section]["scalefactors"]["spot_diameter_fullres"]
    image = Image2DModel.parse(
        DataArray(rgb.transpose(2, 0, 1), dims=("c", "y", "x")),
        transformations={section: Identity()},
        scale_factors=[2, 2],
    )
    circles = ShapesModel.parse(
        np.asarray(adata.obsm["spatial"], dtype=float),
        geometry=0,
        radius=np.full(adata.n_obs, diameter / 2),
        index=adata.obs_names.copy(),
        transformations={section: Identity()},
    )
    adata.obs["region"] = section
    adata.obs["spot"] = adata.obs_names.to_numpy()
    table = TableModel.parse(adata, region=section, region_key="region", instance_key="spot")
    return SpatialData(images={f"{section}_he": image}, shapes={section: circles}, tables={"table": table})


@pytest.fixture(scope="session")
def her2st_c3(her2st_dir):
    return her2st_slide("C3", her2st_dir)

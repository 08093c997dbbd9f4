"""Synthetic CT phantoms: files, world-coordinate anatomy, determinism, domains and CLI errors.

Anatomy is checked in WORLD coordinates, read back from the written files:
- nibabel affines map voxels to RAS mm (+x = patient RIGHT, +y = ANTERIOR, +z = superior);
- SimpleITK / challenge.nifti geometry maps voxels to LPS mm (+x = patient LEFT, +y = POSTERIOR).
The spine carries no label; it is located as the largest connected bone component (HU > 250)
outside every organ label.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from challenge import cases
from challenge.labels import BY_SHORT, MAX_LABEL
from challenge.nifti import read_image
from phantoms import DOMAINS, PhantomConfig, generate_case, write_dataset
from phantoms.domains import ORGAN, Domain, mean_hu
from phantoms.grid import make_grid

SMALL = ("--shape", "96", "96", "40")
ID = {name: BY_SHORT[name].id for name in BY_SHORT}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phantoms", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Small data sets written by the real CLI: LPS, RAS and oblique (RAS axes, rotated 12 deg)."""
    runs = {"LPS": ("--orientation", "LPS"), "RAS": ("--orientation", "RAS"),
            "oblique": ("--orientation", "RAS", "--oblique", "12")}
    out = {}
    for name, extra in runs.items():
        folder = tmp_path_factory.mktemp(name)
        done = run_cli("--out", str(folder), "--count", "3", "--seed", "1", "--shape", "128", "128", "48", "-q",
                       *extra)
        assert done.returncode == 0, done.stderr
        out[name] = folder
    return out


# ---------------------------------------------------------------- files


def test_cli_writes_flare_layout_readable_by_sitk_and_nibabel(tmp_path):
    done = run_cli("--out", str(tmp_path), "--count", "3", "--seed", "1", *SMALL)
    assert done.returncode == 0, done.stderr
    images, labels = cases.list_images(tmp_path / "images"), cases.list_labels(tmp_path / "labels")
    assert list(images) == ["Phantom_0001", "Phantom_0002", "Phantom_0003"] == list(labels)
    for case in images:
        img, lab = sitk.ReadImage(str(images[case])), sitk.ReadImage(str(labels[case]))
        assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert img.GetSize() == lab.GetSize() == (96, 96, 40)
        for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
            assert np.allclose(getattr(img, getter)(), getattr(lab, getter)())
        values = np.unique(sitk.GetArrayFromImage(lab))
        assert values.min() == 0 and values.max() <= MAX_LABEL and len(values) >= 10
        nimg, nlab = nib.load(images[case]), nib.load(labels[case])
        assert nimg.get_data_dtype() == np.int16 and nlab.get_data_dtype() == np.uint8
        assert np.allclose(nimg.affine, nlab.affine) and nimg.shape == nlab.shape == (96, 96, 40)
        hu = np.asarray(nimg.dataobj)
        assert hu.min() < -900 and hu.max() > 300  # air outside, bone inside


def test_only_shape_gives_realistic_field_of_view():
    rng = np.random.default_rng(0)
    for _ in range(50):
        grid = make_grid(rng, (96, 96, 40), None, None, "random", 0.0)
        fov = np.array(grid.spacing) * (96, 96, 40)
        assert 330 <= fov[0] <= 450 and 330 <= fov[1] <= 450 and 150 <= fov[2] <= 300


def test_default_grid_is_realistic():
    rng = np.random.default_rng(0)
    for _ in range(50):
        grid = make_grid(rng, None, None, None, "random", 0.0)
        nk, nj, ni = grid.shape
        assert (ni, nj) == (512, 512) and 60 <= nk <= 120
        assert 0.6 <= grid.spacing[0] == grid.spacing[1] <= 1.0 and 1.5 <= grid.spacing[2] <= 5.0


@pytest.mark.parametrize("name,codes", [("LPS", ("L", "P", "S")), ("RAS", ("R", "A", "S")),
                                        ("oblique", ("R", "A", "S"))])
def test_orientation_and_origin(datasets, name, codes):
    for path in sorted((datasets[name] / "images").iterdir()):
        affine = nib.load(path).affine
        assert nib.aff2axcodes(affine) == codes
        assert np.linalg.norm(affine[:3, 3]) > 10  # a non-zero origin
        direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
        off_axis = np.abs(direction[~np.eye(3, dtype=bool)]).max()
        assert (off_axis > 0.1) if name == "oblique" else (off_axis < 1e-9)


# ---------------------------------------------------------------- anatomy in world coordinates


def _centroids(labels: np.ndarray, image: np.ndarray, to_world) -> dict[str, np.ndarray]:
    """World centroid of every present organ and of the spine; arrays and ``to_world`` share an index order."""
    out = {}
    for name, label in ID.items():
        idx = np.argwhere(labels == label)
        if len(idx):
            out[name] = to_world(idx.mean(axis=0))
    bone, count = ndimage.label((image > 250) & (labels == 0))
    assert count > 0, "no bone found"
    biggest = np.argmax(np.bincount(bone.ravel())[1:]) + 1
    out["spine"] = to_world(np.argwhere(bone == biggest).mean(axis=0))
    return out


def _check_anatomy(c: dict[str, np.ndarray], right: np.ndarray, anterior: np.ndarray, superior: np.ndarray) -> int:
    """Assert the layout along world unit vectors pointing to the patient's right, anterior, superior.
    Returns how many relations were checked (organs may be absent)."""
    def side(a, b, axis):  # True when a lies further along ``axis`` than b
        return float((c[a] - c[b]) @ axis) > 0

    checks = [("Liver", "spine", right), ("spine", "Spleen", right), ("Pancreas", "RK", anterior),
              ("Pancreas", "LK", anterior), ("IVC", "Aorta", right), ("Aorta", "spine", anterior),
              ("IVC", "spine", anterior), ("RAG", "RK", superior), ("LAG", "LK", superior),
              ("Liver", "Gallbladder", superior), ("spine", "LK", right), ("RK", "spine", right)]
    done = 0
    for a, b, axis in checks:
        if a in c and b in c:
            assert side(a, b, axis), f"{a} should lie beyond {b} along {axis}: {c[a]} vs {c[b]}"
            done += 1
    return done


@pytest.mark.parametrize("name", ["LPS", "RAS", "oblique"])
def test_anatomy_in_nibabel_ras_world(datasets, name):
    checked = 0
    for case, path in cases.list_images(datasets[name] / "images").items():
        img = nib.load(path)
        lab = nib.load(datasets[name] / "labels" / cases.label_name(case))
        affine = img.affine  # nibabel arrays are (i, j, k); the affine gives RAS mm

        def to_world(ijk, affine=affine):
            return affine[:3, :3] @ ijk + affine[:3, 3]

        c = _centroids(np.asarray(lab.dataobj), np.asarray(img.dataobj), to_world)
        checked += _check_anatomy(c, right=np.array([1.0, 0, 0]), anterior=np.array([0, 1.0, 0]),
                                  superior=np.array([0, 0, 1.0]))
    assert checked >= 30


@pytest.mark.parametrize("name", ["LPS", "RAS", "oblique"])
def test_anatomy_in_simpleitk_lps_world(datasets, name):
    checked = 0
    for case, path in cases.list_images(datasets[name] / "images").items():
        image, geometry = read_image(path)
        labels, _ = read_image(datasets[name] / "labels" / cases.label_name(case))

        def to_world(kji, geometry=geometry):  # arrays are (k, j, i); the geometry wants (i, j, k)
            return geometry.index_to_world(kji[::-1])[0]

        c = _centroids(labels, image, to_world)
        checked += _check_anatomy(c, right=np.array([-1.0, 0, 0]), anterior=np.array([0, -1.0, 0]),
                                  superior=np.array([0, 0, 1.0]))
    assert checked >= 30


@pytest.mark.parametrize("index", [0, 1])
def test_small_organs_lie_in_fat_not_inside_their_neighbours(index):
    """The thoracic esophagus runs in mediastinal fat behind the heart, and each adrenal gland in perirenal
    fat: the tissue around them is not heart muscle, and not liver, stomach, spleen or pancreas. (Drawn
    inside the heart and the liver they were invisible in unenhanced scans: 5 HU of contrast.) A noise-free
    domain, so that HU tells the tissue."""
    clean = Domain("clean", "portal", noise_sd_hu=0.0, blur_mm=0.0, hu_jitter=0.0)
    c = generate_case(7, index, PhantomConfig(shape=(200, 200, 150), spacing=(1.6, 1.6, 1.6), domain=clean))
    eso = c.labels == ID["Esophagus"]
    shell = ndimage.binary_dilation(eso) & (c.labels == 0)
    muscle_like = shell & (c.image > 30) & (c.image < 90)  # heart muscle is 60 HU in the portal phase, fat -100
    assert shell.sum() > 300 and muscle_like.sum() < 0.1 * shell.sum()
    for gland in ("RAG", "LAG"):
        mask = c.labels == ID[gland]
        if mask.any():
            around = c.labels[ndimage.binary_dilation(mask) & ~mask]
            inside = np.isin(around, [ID["Liver"], ID["Stomach"], ID["Spleen"], ID["Pancreas"]])
            assert inside.mean() < 0.1, f"{gland}: {inside.mean():.0%} of its neighbours are organ voxels"


def test_duodenum_wraps_pancreas_head_on_the_right():
    p = generate_case(2, 0, PhantomConfig(shape=(128, 128, 48), orientation="LPS"))
    world = {n: p.geometry.index_to_world(np.argwhere(p.labels == ID[n])[:, ::-1]) for n in ("Duodenum", "Pancreas")}
    # The duodenum's rightmost point (most negative LPS x) lies right of the whole pancreas centroid.
    assert world["Duodenum"][:, 0].min() < world["Pancreas"][:, 0].mean() - 20
    # The esophagus enters the stomach: they touch.
    touching = ndimage.binary_dilation(p.labels == ID["Esophagus"]) & (p.labels == ID["Stomach"])
    assert touching.any()


def _touches_border(mask: np.ndarray) -> bool:
    return any(np.take(mask, [0, -1], axis=a).any() for a in range(3))


def test_oblique_grid_keeps_anatomy_in_place_in_world():
    """Same seed and case, straight vs 12-degree grid: the arrays differ, but every organ that lies
    wholly inside both fields of view has the same world centroid (within a voxel)."""
    straight, oblique = (generate_case(1, 2, PhantomConfig(shape=(128, 128, 48), orientation="RAS", oblique_deg=d))
                         for d in (0, 12))
    assert not np.array_equal(straight.labels, oblique.labels)
    compared = 0
    for label in straight.present:
        masks = [p.labels == label for p in (straight, oblique)]
        if label not in oblique.present or any(_touches_border(m) for m in masks):
            continue
        a, b = (p.geometry.index_to_world(np.argwhere(m)[:, ::-1].mean(axis=0))[0]
                for p, m in zip((straight, oblique), masks, strict=True))
        assert np.linalg.norm(a - b) < max(straight.geometry.spacing), (label, a, b)
        compared += 1
    assert compared >= 3


def test_field_of_view_cuts_the_tubes():
    for index in range(3):
        p = generate_case(3, index, PhantomConfig(shape=(96, 96, 40), orientation="random"))
        top = p.labels[-1]  # k runs inferior -> superior in both LPS and RAS voxel orders
        assert (top == ID["Aorta"]).any() and (top == ID["IVC"]).any()


# ---------------------------------------------------------------- determinism and variety


def test_same_seed_same_arrays_and_prefix_of_cases(tmp_path, datasets):
    config = PhantomConfig(shape=(128, 128, 48), orientation="RAS", oblique_deg=12)
    for index, case in enumerate(cases.list_images(datasets["oblique"] / "images")):
        image, geometry = read_image(datasets["oblique"] / "images" / cases.image_name(case))
        again = generate_case(1, index, config)  # cases 0..2 of a --count 3 run, regenerated one by one
        assert np.array_equal(image, again.image) and geometry.mismatch(again.geometry) is None
    a, b = generate_case(7, 0, config), generate_case(7, 0, config)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    other = generate_case(8, 0, config)
    assert not np.array_equal(a.labels, other.labels) or not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.labels, generate_case(7, 1, config).labels)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10_000), orientation=st.sampled_from(["LPS", "RAS"]),
       oblique=st.sampled_from([0.0, 7.5]), domain=st.sampled_from(["mixed", "thick", "arterial"]),
       shape=st.tuples(st.integers(16, 40), st.integers(16, 40), st.integers(16, 24)))
def test_any_case_is_well_formed(seed, index, orientation, oblique, domain, shape):
    config = PhantomConfig(shape=shape, orientation=orientation, oblique_deg=oblique, domain=domain)
    p = generate_case(seed, index, config)
    assert p.image.dtype == np.int16 and p.labels.dtype == np.uint8
    assert p.image.shape == p.labels.shape == p.geometry.shape == shape[::-1]
    assert p.labels.max() <= MAX_LABEL and ID["Liver"] in p.present
    assert p.image.min() >= -1024 and (p.image[p.labels == 0] < -900).any()  # air around the body
    assert p.case == f"Phantom_{index + 1:04d}"


def test_write_dataset_returns_ids_in_order(tmp_path):
    ids = write_dataset(tmp_path, 2, 5, PhantomConfig(shape=(64, 64, 24), prefix="Syn"))
    assert ids == ["Syn_0001", "Syn_0002"]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["Syn_0001.nii.gz", "Syn_0002.nii.gz"]


def test_organ_presence_and_size_vary_across_seeds():
    config = PhantomConfig(shape=(64, 64, 32))
    present = [set(generate_case(seed, 0, config).present) for seed in range(40)]
    gallbladder = sum(ID["Gallbladder"] in p for p in present)
    assert 20 <= gallbladder < 40  # ~20 % of cases have none
    assert all({ID["Liver"], ID["Aorta"], ID["IVC"]} <= p for p in present)
    livers = [np.count_nonzero(generate_case(seed, 0, config).labels == ID["Liver"]) for seed in range(5)]
    assert len(set(livers)) == 5


# ---------------------------------------------------------------- domains


def _interior_mean_sd(p, label: int) -> tuple[float, float]:
    inside = ndimage.binary_erosion(p.labels == label, iterations=2)
    values = p.image[inside].astype(float)
    return values.mean(), values.std()


def test_contrast_phases_change_hu_as_documented():
    base = PhantomConfig(shape=(128, 128, 48), orientation="LPS")
    phantoms = {name: generate_case(4, 0, PhantomConfig(**{**base.__dict__, "domain": name}))
                for name in ("portal", "arterial", "noncontrast")}
    labels = phantoms["portal"].labels
    assert all(np.array_equal(labels, p.labels) for p in phantoms.values())  # same anatomy, other HU
    for name, p in phantoms.items():
        for organ in ("Liver", "Aorta", "Spleen"):
            measured, _ = _interior_mean_sd(p, ID[organ])
            assert abs(measured - mean_hu(DOMAINS[name].phase, ORGAN + ID[organ])) < 25, (name, organ, measured)
    aorta = {n: _interior_mean_sd(p, ID["Aorta"])[0] for n, p in phantoms.items()}
    assert aorta["arterial"] > aorta["portal"] + 80 > aorta["noncontrast"] + 160


def test_lowdose_is_noisier_and_thick_has_thick_slices():
    base = dict(shape=(128, 128, 48), orientation="LPS")
    _, sd_portal = _interior_mean_sd(generate_case(4, 0, PhantomConfig(**base)), ID["Liver"])
    _, sd_low = _interior_mean_sd(generate_case(4, 0, PhantomConfig(**base, domain="lowdose")), ID["Liver"])
    assert sd_low > 2 * sd_portal
    thick = generate_case(4, 0, PhantomConfig(shape=(128, 128, 32), domain="thick"))
    assert thick.geometry.spacing[2] >= 4.5 and thick.domain.name == "thick"


def test_mixed_domain_varies_per_case():
    names = {generate_case(0, i, PhantomConfig(shape=(32, 32, 16), domain="mixed")).domain.name for i in range(12)}
    assert len(names) >= 3


# ---------------------------------------------------------------- CLI errors


@pytest.mark.parametrize("args", [
    ("--count", "-1"), ("--count", "abc"), ("--count", "2", "--shape", "96", "96"),
    ("--count", "2", "--shape", "0", "96", "40"), ("--count", "2", "--shape", "a", "b", "c"),
    ("--count", "2", "--oblique", "90"), ("--count", "2", "--domain", "venous"),
    ("--count", "2", "--spacing", "1", "1", "-2"), ("--count", "1", "--prefix", "a/b"),
    ("--count", "1", "--seed", "-3"), ("--count", "1", "--orientation", "LAS"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args):
    done = run_cli("--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "images").exists() or not any((tmp_path / "out" / "images").iterdir())


def test_prefix_error_names_the_argument(tmp_path):
    done = run_cli("--out", str(tmp_path), "--count", "1", "--prefix", "a/b")
    assert done.returncode == 2 and "prefix" in done.stderr


def test_unwritable_out_exits_2(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = run_cli("--out", str(blocker / "sub"), "--count", "1", *SMALL)
    assert done.returncode == 2 and "--out" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_help_lists_domains_and_examples():
    done = run_cli("--help")
    assert done.returncode == 0
    for word in ("portal", "arterial", "noncontrast", "lowdose", "thick", "mixed", "Examples", "--oblique"):
        assert word in done.stdout

"""The challenge definitions: labels, case naming and NIfTI geometry round trips."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from challenge import cases, labels, rules
from challenge.nifti import Geometry, NiftiError, read_geometry, read_image, write_image, write_label


def test_label_table_matches_flare22():
    assert [o.short for o in labels.ORGANS] == ["Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG",
                                                "LAG", "Gallbladder", "Esophagus", "Stomach", "Duodenum", "LK"]
    assert tuple(range(1, 14)) == labels.LABEL_IDS
    assert [o.tolerance_mm for o in labels.ORGANS] == [5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3]
    assert labels.TUBULAR_IDS == (5, 6, 10)
    cols = labels.metric_columns()
    assert cols[0] == "Liver_DSC" and cols[13] == "Liver_NSD" and len(cols) == 26


def test_penalties_are_the_official_values():
    assert rules.PENALTY_AUC_GPU_TOL2G == 29_491_200
    assert rules.PENALTY_AUC_CPU == 360_000
    assert rules.PENALTY_TIME_S == 3600


@pytest.mark.parametrize("name,case", [("FLARE22_Tr_0001_0000.nii.gz", "FLARE22_Tr_0001"), ("a_0000.nii.gz", "a")])
def test_case_ids(name, case):
    assert cases.case_from_image(name) == case
    assert cases.image_name(case) == name
    assert cases.case_from_label(cases.label_name(case)) == case


@pytest.mark.parametrize("bad", ["x.nii", "_0000.nii.gz", "x_0001.nii.gz.bak"])
def test_bad_image_names(bad):
    with pytest.raises(ValueError, match="not an image name"):
        cases.case_from_image(bad)


def test_listing_separates_images_and_labels(tmp_path):
    for name in ["b_0000.nii.gz", "a_0000.nii.gz", "a.nii.gz", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir_0000.nii.gz").mkdir()
    assert list(cases.list_images(tmp_path)) == ["a", "b"]
    assert list(cases.list_labels(tmp_path)) == ["a"]


def _geometry(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Geometry:
    return Geometry(size=(7, 5, 3), spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.5, -300.0),
                    direction=tuple(float(d) for d in direction))


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (0.9950042, -0.0998334, 0, 0.0998334, 0.9950042, 0, 0, 0, 1)])
def test_round_trip_keeps_geometry_and_axis_order(tmp_path, direction):
    geom = _geometry(direction)
    array = np.arange(3 * 5 * 7, dtype=np.int16).reshape(geom.shape)  # (k, j, i)
    path = write_image(array, geom, tmp_path / "x_0000.nii.gz")
    back, back_geom = read_image(path)
    assert back_geom.mismatch(geom, tol=1e-6) is None
    np.testing.assert_array_equal(back, array)
    # nibabel sees the same file with axes (i, j, k): its zooms are the (i, j, k) spacing.
    nii = nib.load(path)
    assert nii.shape == geom.size
    np.testing.assert_allclose(nii.header.get_zooms(), geom.spacing, rtol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(nii.dataobj), array.transpose(2, 1, 0))
    # Index -> world agrees with SimpleITK's own transform.
    image = sitk.ReadImage(str(path))
    assert np.allclose(geom.index_to_world([2, 3, 1])[0], image.TransformContinuousIndexToPhysicalPoint((2, 3, 1)))
    assert read_geometry(path).mismatch(geom, tol=1e-6) is None


def test_label_is_written_as_uint8_on_the_grid(tmp_path):
    geom = _geometry()
    path = write_label(np.ones(geom.shape, dtype=np.int64), geom, tmp_path / "x.nii.gz")
    array, back = read_image(path)
    assert array.dtype == np.uint8 and back.mismatch(geom) is None
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a container's non-root user
    with pytest.raises(ValueError, match="array shape"):
        write_label(np.ones((1, 2, 3), np.uint8), geom, tmp_path / "y.nii.gz")
    assert not (tmp_path / "y.nii.gz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]  # no temporary left behind


def test_mismatch_names_the_field():
    geom = _geometry()
    assert "spacing" in geom.mismatch(Geometry(geom.size, (0.8, 0.9, 2.6), geom.origin, geom.direction))
    assert "size" in geom.mismatch(Geometry((7, 5, 4), geom.spacing, geom.origin, geom.direction))
    assert geom.mismatch(Geometry(geom.size, geom.spacing, (-10.0005, 20.5, -300.0), geom.direction)) is None


def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path):
    good = write_image(np.zeros((3, 5, 7), np.int16), _geometry(), tmp_path / "good.nii.gz")
    data = good.read_bytes()
    bad = {
        "empty.nii.gz": b"",
        "text.nii.gz": b"not an image at all\n",
        "truncated.nii.gz": data[: len(data) // 2],
        "tail_cut.nii.gz": data[:-6],  # ITK alone reads this one, filling the missing voxels
        "corrupt.nii.gz": gzip.compress(b"\0" * 400),
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(NiftiError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(NiftiError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")


def test_2d_and_4d_images_are_refused(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4], sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkInt16), str(tmp_path / "four.nii.gz"))
    for name in ["flat.nii.gz", "four.nii.gz"]:
        with pytest.raises(NiftiError, match="expected a 3D"):
            read_image(tmp_path / name)


# --- the one atomic writer ------------------------------------------------------------------------------

def test_atomic_writes_replace_whole_files_readable_by_all(tmp_path):
    from challenge.files import atomic_path, atomic_write_bytes, atomic_write_text

    target = tmp_path / "deep" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and (target.stat().st_mode & 0o777) == 0o644
    with atomic_path(tmp_path / "fig.png", suffix=".png") as tmp:
        assert tmp.name.endswith(".png") and tmp.parent == tmp_path  # a library may infer the type
        tmp.write_bytes(b"png")
    assert (tmp_path / "fig.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "fig.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from challenge.files import atomic_write, atomic_write_text

    target = atomic_write_text(tmp_path / "f.csv", "old")

    def crash(handle):
        handle.write("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.csv"]


# --- team names -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["team", "team-a", "a_b", "a__b", "a.b", "t0", "a--b", "x" * 64])
def test_valid_team_names(name):
    from challenge.teams import check_team

    assert check_team(name) == name


@pytest.mark.parametrize("name", ["", "Team", "team one", "../x", "a/b", ".hidden", "-a", "a-", "a___b", "$\\foo$",
                                  "x" * 65, "é"])
def test_invalid_team_names_are_refused_in_one_line(name):
    from challenge.teams import TeamNameError, check_team

    with pytest.raises(TeamNameError) as err:
        check_team(name)
    assert "\n" not in str(err.value)


def test_team_names_come_from_archives_as_flare_derived_them():
    from challenge.teams import TeamNameError, team_from_archive

    assert team_from_archive("Team-A.tar.gz") == "team-a"
    assert team_from_archive("/some/where/abc.v2.tar") == "abc"
    with pytest.raises(TeamNameError, match=".hidden.tar"):
        team_from_archive(".hidden.tar")


def test_a_team_folder_is_never_outside_the_results(tmp_path):
    from challenge.results import team_dir
    from challenge.teams import TeamNameError

    assert team_dir(tmp_path, "ok").path == tmp_path / "ok"
    for bad in ("../../x", "/abs", "a/../../b"):
        with pytest.raises(TeamNameError):
            team_dir(tmp_path, bad)


# --- run.json -------------------------------------------------------------------------------------------

def test_run_record_round_trips_and_keeps_every_attempt(tmp_path):
    from challenge.results import RUN_SCHEMA, RunRecord, TeamDir, finish_attempt, read_run

    team = TeamDir(tmp_path / "t")
    record = RunRecord(run_id="abc", team="t", cases=["A"], settings={"timeout_s": 60.0})
    finish_attempt(record.start_attempt(monitor="1:2.00"), "interrupted", {"ok": 1})
    record.save(team)
    again = read_run(team)
    assert again is not None and again == record and again.schema == RUN_SCHEMA
    again.start_attempt()
    again.save(team)
    attempts = read_run(team).attempts
    assert [a.run_id for a in attempts] == ["abc", "abc"] and attempts[0].status == "interrupted"
    assert attempts[1].status == "running" and attempts[1].host


def test_exit_codes_are_the_documented_table():
    from challenge.exitcodes import ExitCode, for_failures

    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 130]
    assert for_failures(0) == 0 and for_failures(3) == 1

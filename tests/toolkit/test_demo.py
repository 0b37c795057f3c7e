from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from seg.runtime.errors import InputError
from seg.toolkit.demo import make_mosaic, run_demo


def test_mosaic_repeats_images_to_fill_the_grid(tmp_path: Path) -> None:
    import numpy as np

    from seg.runtime.io import write_image

    paths = []
    for i in range(2):
        write_image(tmp_path / f"{i}.png", np.full((4, 6), i * 100, np.uint8))
        paths.append(tmp_path / f"{i}.png")
    mosaic = make_mosaic(paths, grid=3)
    assert mosaic.shape == (12, 18)
    assert mosaic[0, 0] == 0 and mosaic[0, 6] == 100 and mosaic[0, 12] == 0 and mosaic[4, 0] == 100


@pytest.mark.slow
def test_demo_on_a_tiny_budget_writes_a_complete_report(tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_demo(tmp_path / "demo", budget_s=8, width=4, say=lines.append, progress=False, synth=(8, 256))
    stages = [line.split(":")[0] for line in lines]
    assert stages[:2] == ["data", "train"] and "export" in stages and "evaluate (test, 2 held-out slices)" in stages
    assert report.numbers["export"]["passed"] is True
    assert report.numbers["infer"]["images"] == 1
    volume = report.numbers["volume"]  # the 2 test slices as a Zarr volume on a 2-worker Dask cluster
    assert volume["shape"] == "2 x 256 x 256" and volume["blocks"] == 2 and volume["workers"] == 2
    assert volume["same_as_segmenter_predict"] is True and volume["max_abs_diff"] <= 1e-5
    assert stages.index("infer") < stages.index("volume") < stages.index("evaluate (test, 2 held-out slices)")
    text = (tmp_path / "demo" / "report.md").read_text()
    assert "max_abs_diff" in text and "v_rand" in text and "## volume" in text and "same_as_segmenter_predict" in text
    for figure in report.figures:
        assert figure.is_file(), figure
        with Image.open(figure) as img:
            assert img.format == "PNG"
    again: list[str] = []
    run_demo(tmp_path / "demo", budget_s=8, width=4, say=again.append, progress=False, synth=(8, 256))
    assert again[0].startswith("data: reusing synthetic slices")


class _Resumed(Exception):
    """Stops the train stage once it has chosen to resume."""


def test_a_demo_killed_before_its_first_epoch_resumes_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill before the first epoch leaves the run folder with only config.json: the rerun resumes that run
    (``seg.train.resume`` starts it over) instead of refusing a run name that exists."""
    from seg import train
    from seg.toolkit import demo

    run_dir = tmp_path / "demo" / "runs" / "demo"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    resumed: list[Path] = []

    def resume(run: Path, progress: bool = True, time_budget: float | None = None) -> None:
        resumed.append(Path(run))
        assert time_budget == 8  # the rerun's budget, not the first run's
        raise _Resumed

    monkeypatch.setattr(train, "resume", resume)
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("started a new run over the old one"))
    with pytest.raises(_Resumed):
        demo._train_stage(demo.DemoReport(tmp_path / "demo", tmp_path / "data"), 8, 0, 4, lambda line: None, False)
    assert resumed == [run_dir]


def test_mosaic_leaves_out_images_of_another_size(tmp_path: Path) -> None:
    import numpy as np

    from seg.runtime.io import write_image

    write_image(tmp_path / "a.png", np.full((4, 6), 10, np.uint8))
    write_image(tmp_path / "b.png", np.full((8, 8), 20, np.uint8))
    mosaic = make_mosaic([tmp_path / "a.png", tmp_path / "b.png"], grid=2)
    assert mosaic.shape == (8, 12) and set(np.unique(mosaic)) == {10}


def test_demo_refuses_an_out_made_with_other_settings_before_any_work(tmp_path: Path) -> None:
    from seg.toolkit import demo

    out = tmp_path / "demo"
    demo._claim_out(out, None, 0, 16)
    demo._claim_out(out, None, 0, 16)  # the same settings: accepted
    with pytest.raises(InputError, match=r"other settings \(seed 0 -> 1; width 16 -> 8\)"):
        run_demo(out, seed=1, width=8, say=lambda line: None, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["demo.json"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "data").mkdir()  # a demo from before settings were recorded
    with pytest.raises(InputError, match="settings were not recorded"):
        run_demo(tmp_path / "old", say=lambda line: None, progress=False)


def test_demo_refuses_a_bad_budget_or_stacks_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--budget 0: must be a positive"):
        run_demo(tmp_path / "a", budget_s=0, say=lambda line: None, progress=False)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "train-volume.tif").write_bytes(b"")
    with pytest.raises(InputError, match="holds the ISBI stacks"):
        run_demo(tmp_path / "b", data=stacks, say=lambda line: None, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_demo_crop_fits_small_slices(tmp_path: Path) -> None:
    from seg.toolkit import demo
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "big", n=2, size=300)
    make_dataset(tmp_path / "small", n=2, size=100)
    assert demo._crop_for(tmp_path / "big", 16) == 256
    assert demo._crop_for(tmp_path / "small", 16) == 96
    with pytest.raises(InputError, match="smaller than the U-Net's 128-px size multiple"):
        demo._crop_for(tmp_path / "small", 128)

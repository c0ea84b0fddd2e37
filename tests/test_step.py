import json
import os

import pytest

from llm_hardneg.components.common.step import step_run


def test_step_runs_once_then_reuses_its_output(tmp_path):
    cache, calls = str(tmp_path / "cache"), []
    for out in ("a", "b", "b"):  # the third reuses into a directory that already holds the files
        with step_run("demo", str(tmp_path / out), '{"x": 1}', [], cache) as run:
            if run.needed:
                calls.append(out)
                (tmp_path / out / "data.txt").write_text("payload")
        assert (tmp_path / out / "data.txt").read_text() == "payload"
    assert calls == ["a"]
    assert json.load(open(tmp_path / "b" / "step.json"))["reused"] is True
    assert json.load(open(tmp_path / "a" / "step.json"))["reused"] is False


def test_changed_config_or_input_reruns(tmp_path):
    cache, calls = str(tmp_path / "cache"), []
    upstream = tmp_path / "up"
    upstream.mkdir()
    (upstream / "fingerprint.txt").write_text("v1")
    for i, (config, fp) in enumerate([("c1", "v1"), ("c2", "v1"), ("c2", "v2"), ("c2", "v2")]):
        (upstream / "fingerprint.txt").write_text(fp)
        with step_run("demo", str(tmp_path / f"o{i}"), config, [str(upstream)], cache) as run:
            if run.needed:
                calls.append(i)
    assert calls == [0, 1, 2]
    assert os.path.exists(tmp_path / "o3" / "fingerprint.txt")


def test_code_fingerprint_covers_what_the_step_imports_only(tmp_path, monkeypatch):
    from llm_hardneg.components.common import step

    root = tmp_path / "pkg"
    for package, source in {"common": "x = 1", "a": "from llm_hardneg.components.common import x",
                            "b": "import llm_hardneg.components.a", "c": "y = 2"}.items():
        (root / "components" / package).mkdir(parents=True)
        (root / "components" / package / "core.py").write_text(source)
    (root / "components" / "__init__.py").write_text("")
    (root / "schemas").mkdir()
    monkeypatch.setattr(step, "PACKAGE_ROOT", str(root))

    def prints():
        step.code_fingerprint.cache_clear()
        return {name: step.code_fingerprint(name) for name in ("a", "b", "c")}

    before = prints()
    (root / "components" / "c" / "core.py").write_text("y = 3")  # only c changes
    after = prints()
    assert after["c"] != before["c"] and after["a"] == before["a"] and after["b"] == before["b"]
    (root / "components" / "a" / "core.py").write_text("from llm_hardneg.components.common import x  # edited")
    again = prints()  # b imports a: both change
    assert again["a"] != after["a"] and again["b"] != after["b"] and again["c"] == after["c"]
    (root / "schemas" / "s.pbtxt").write_text("feature {}")
    assert all(prints()[n] != again[n] for n in "abc")  # schemas and common belong to every step
    step.code_fingerprint.cache_clear()


def test_step_command_line_ends_input_errors_with_one_line(tmp_path, capsys):
    import dataclasses

    import pytest

    from llm_hardneg.components.common.cli import step_main

    @dataclasses.dataclass(frozen=True)
    class Config:
        size: int = 1

        def __post_init__(self):
            if self.size < 1:
                raise ValueError(f"size must be >= 1, got {self.size}")

    def run(config, path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        raise KeyError("a bug")

    assert step_main(Config, ["input"], run, "", ["--input", "x", "--size", "0"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == "error: size must be >= 1, got 0"
    assert step_main(Config, ["input"], run, "", ["--input", str(tmp_path / "nope")]) == 1
    assert "nope: no such file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):  # --verbose: the traceback
        step_main(Config, ["input"], run, "", ["--input", str(tmp_path / "nope"), "--verbose"])
    with pytest.raises(KeyError):  # a bug keeps its traceback
        step_main(Config, ["input"], run, "", ["--input", str(tmp_path)])


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, False),
])
def test_only_the_chief_records_a_multi_worker_step(tmp_path, monkeypatch, tf_config, chief):
    from llm_hardneg.components.common.step import is_chief_task

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief_task() == chief
    out = str(tmp_path / "out")
    with step_run("trainer", out, "{}") as run:
        assert run.needed
    assert os.path.exists(os.path.join(out, "step.json")) == chief

import csv
import filecmp
import json
import os

import numpy as np
import pytest

from benchmarks import synthetic
from llm_hardneg.components.example_gen.readers import generic_rows


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_files(tmp_path):
    a = synthetic.write(str(tmp_path / "a"), 200, 50, 3000, seed=1, chunk=1000, log=lambda _: None)
    b = synthetic.write(str(tmp_path / "b"), 200, 50, 3000, seed=1, chunk=1000, log=lambda _: None)
    c = synthetic.write(str(tmp_path / "c"), 200, 50, 3000, seed=2, chunk=1000, log=lambda _: None)
    assert filecmp.cmp(a["items"], b["items"], shallow=False)
    assert filecmp.cmp(a["interactions"], b["interactions"], shallow=False)
    assert not filecmp.cmp(a["interactions"], c["interactions"], shallow=False)
    assert len(read_csv(a["interactions"])) == 3000


def test_files_split_the_same_rows_in_order(tmp_path):
    one = synthetic.write(str(tmp_path / "one"), 200, 50, 3000, seed=1, chunk=700, log=lambda _: None)
    three = synthetic.write(str(tmp_path / "three"), 200, 50, 3000, seed=1, chunk=700, log=lambda _: None, files=3)
    import glob

    parts = sorted(glob.glob(three["interactions"]))
    assert [len(read_csv(p)) for p in parts] == [1000, 1000, 1000]
    assert [row for p in parts for row in read_csv(p)] == read_csv(one["interactions"])


def test_shape_of_the_data(tmp_path):
    paths = synthetic.write(str(tmp_path), 400, 100, 20_000, families=20, seed=0, chunk=7000, log=lambda _: None)
    rows = read_csv(paths["interactions"])
    items = np.array([int(r["item_id"][1:]) for r in rows])
    users = np.array([int(r["user_id"][1:]) for r in rows])
    timestamps = np.array([int(r["timestamp"]) for r in rows])
    assert len(rows) == 20_000 and items.max() < 400 and users.max() < 100
    assert (np.diff(timestamps) > 0).all()  # every user's sequence is in time order
    counts = np.sort(np.bincount(items, minlength=400))[::-1]
    assert counts[:4].sum() > 10 * counts[200:204].sum()  # power-law popularity: a head and a long tail
    family = items % 20  # each user mostly stays in one family (taste 0.7)
    share = np.mean([np.bincount(family[users == u]).max() / (users == u).sum() for u in range(100)])
    assert share > 0.6
    ratings = np.array([float(r["rating"]) for r in rows])
    assert set(ratings) <= {1, 2, 3, 4, 5} and 0.8 < (ratings >= 3).mean() < 0.9
    catalogue = read_csv(paths["items"])
    assert len(catalogue) == 400 and catalogue[7]["item_id"] == "i7"
    words = synthetic.family_words(20, 0)
    assert catalogue[27]["text"].startswith(words[7]) and catalogue[27]["categories"] == "group7"


def test_parquet_is_read_by_the_generic_reader(tmp_path):
    paths = synthetic.write(str(tmp_path), 30, 10, 500, fmt="parquet", log=lambda _: None)
    rows = [r.row for r in generic_rows(paths["interactions"])]
    items = [r.row for r in generic_rows(paths["items"])]
    assert len(rows) == 500 and set(rows[0]) == {"user_id", "item_id", "rating", "timestamp"}
    assert len(items) == 30 and items[3]["categories"] == ["group3"]


def test_bad_sizes_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="families=50"):
        synthetic.write(str(tmp_path), 10, 5, 100, families=50)
    with pytest.raises(ValueError, match="got 'tsv'"):
        synthetic.write(str(tmp_path), 10, 5, 100, fmt="tsv")


def test_example_gen_takes_it_as_generic_input(tmp_path):
    from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen

    paths = synthetic.write(str(tmp_path / "data"), 60, 40, 2000, seed=0, log=lambda _: None)
    out = str(tmp_path / "examples")
    run_example_gen(ExampleGenConfig(source="generic", interactions=paths["interactions"], items=paths["items"],
                                     num_train_shards=1, num_eval_shards=1), out)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["train_examples"] + summary["eval_examples"] == 2000

"""Every bad-input case: a clear error naming file, line and field, or a counted, dead-lettered drop."""

import gzip
import json
import os

import numpy as np
import pytest

from llm_hardneg.components.example_gen import ExampleGenConfig, run_example_gen
from tests import helpers


def run(tmp_path, extra_ratings=(), movies_extra=(), bad_rows="fail", ratings_bytes=b""):
    data = str(tmp_path / "ml")
    helpers.write_movielens(data, extra_lines=extra_ratings)
    if movies_extra:
        with open(os.path.join(data, "movies.dat"), "a", encoding="latin-1") as f:
            f.writelines(line + "\n" for line in movies_extra)
    if ratings_bytes:
        with open(os.path.join(data, "ratings.dat"), "ab") as f:
            f.write(ratings_bytes)
    out = str(tmp_path / "out")
    return run_example_gen(ExampleGenConfig.movielens(data, bad_rows=bad_rows), out), out


def dead_letters(out):
    with open(os.path.join(out, "dead_letter", "rows.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


BAD_ROWS = [
    ("1::2::3", "<line>", "expected 4 '::'-separated fields, got 3"),  # wrong field count
    ("garbage", "<line>", "expected 4"),  # malformed line
    ("1::2::five::1100", "rating", "not a number"),  # non-numeric rating
    ("1::2::9::1100", "rating", "9.0 above maximum 5.0"),  # out-of-range rating
    ("1::2::4::soon", "timestamp", "not an integer"),  # non-numeric timestamp
    ("1::2::4::-7", "timestamp", "-7 below minimum 0"),  # out-of-range timestamp
]


@pytest.mark.parametrize("line,field,problem", BAD_ROWS)
def test_bad_row_fails_by_default_naming_file_line_field(tmp_path, line, field, problem):
    with pytest.raises(Exception, match=rf"ratings.dat:601: field '{field}': {problem}"):
        run(tmp_path, extra_ratings=(line,))


@pytest.mark.parametrize("line,field,problem", BAD_ROWS)
def test_bad_row_dead_letter_policy_drops_counts_and_writes(tmp_path, line, field, problem):
    summary, out = run(tmp_path, extra_ratings=(line,), bad_rows="dead_letter")
    assert summary["dropped"]["bad_interactions_row"] == 1
    assert summary["train_examples"] + summary["eval_examples"] == 600
    (letter,) = dead_letters(out)
    assert (letter["line"], letter["field"], letter["raw"]) == (601, field, line)
    assert problem in letter["problem"]


def test_non_utf8_bytes(tmp_path):
    with pytest.raises(Exception, match=r"ratings.dat:601: field '<bytes>': bytes not valid utf-8"):
        run(tmp_path, ratings_bytes=b"1::2::\xff\xfe::1100\n")
    summary, out = run(tmp_path, ratings_bytes=b"1::2::\xff\xfe::1100\n", bad_rows="dead_letter")
    assert summary["dropped"]["bad_interactions_row"] == 1 and dead_letters(out)[0]["field"] == "<bytes>"


def test_unknown_item_is_dropped_counted_and_dead_lettered(tmp_path):
    summary, out = run(tmp_path, extra_ratings=("1::999::5::1100",))
    assert summary["dropped"]["unknown_item"] == 1
    (letter,) = dead_letters(out)
    assert letter["row"]["item_id"] == "999" and "not in the item table" in letter["problem"]


def test_item_without_text_is_kept_with_a_category_and_dropped_without(tmp_path):
    summary, out = run(tmp_path, movies_extra=("77:: ::Drama", "78:: ::"),
                       extra_ratings=("1::77::5::1100", "1::78::5::1101"))
    assert summary["dropped"]["item_without_text_or_category"] == 1 and summary["dropped"]["unknown_item"] == 1
    assert summary["items_out"] == 41  # 40 + item 77 (no text, category Drama)
    problems = sorted(letter["problem"] for letter in dead_letters(out))
    assert problems[0].startswith("item not in the item table")
    assert problems[1].startswith("item with neither text nor category")
    import pyarrow.parquet as pq

    items = {r["item_id"]: r for r in pq.read_table(os.path.join(out, "items", "items.parquet")).to_pylist()}
    assert items["77"]["text"] == "" and items["77"]["categories"] == ["Drama"] and "78" not in items


def test_catalogue_of_categories_without_text(tmp_path, tiny_bert):
    """Epinions' case: an item file whose items have a category and no text. They are kept; item_embedder skips
    them (counted), the category table covers them, an 'llm' run stops naming the fix; when the drops leave no
    interaction the stop names the counts; a step run alone prints one line without Beam's ERROR traceback."""
    from llm_hardneg.components.example_gen.pipeline import DegenerateSplit
    from llm_hardneg.components.item_clusterer import ItemClustererConfig, run_item_clusterer
    from llm_hardneg.components.item_embedder import ItemEmbedderConfig, run_item_embedder
    from llm_hardneg.components.trainer.data import load_catalogue

    log = helpers.synthetic_log(rows=300)
    with open(tmp_path / "inter.csv", "w") as f:
        f.write("user_id,item_id,rating,timestamp\n")
        f.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in log)
    items = sorted({i for _, i, _, _ in log})
    with open(tmp_path / "items.csv", "w") as f:  # the first three items have text, the others a category only
        f.write("item_id,text,categories\n" + "".join(f"{i},Titled item {i},c0\n" for i in items[:3]))
        f.writelines(f"{i},,c{n % 3}\n" for n, i in enumerate(items[3:]))
    config = ExampleGenConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                              items=str(tmp_path / "items.csv"), split="leave_last_out", history_length=5)
    examples = str(tmp_path / "examples")
    summary = run_example_gen(config, examples)
    assert summary["items_out"] == len(items) and sum(summary["dropped"].values()) == 0
    assert summary["train_examples"] + summary["eval_examples"] == len(log)
    parquet = os.path.join(examples, "items", "*.parquet")
    embedded = run_item_embedder(ItemEmbedderConfig(model=tiny_bert), parquet, str(tmp_path / "emb"))
    assert (embedded["items_out"], embedded["items_without_text"]) == (3, len(items) - 3)
    clusters = str(tmp_path / "clusters")
    report = run_item_clusterer(ItemClustererConfig(num_clusters=2), str(tmp_path / "emb"), parquet, clusters)
    assert report["category"]["items_assigned"] == len(items) and report["llm"]["items_assigned"] == 3
    assert load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, "category")).num_clusters == 3
    with pytest.raises(ValueError, match=f"{len(items) - 3} of {len(items)} items have no cluster .*cluster_source "
                                         "category or behavioural"):
        load_catalogue(os.path.join(examples, "items"), os.path.join(clusters, "llm"))

    with open(tmp_path / "items.csv", "w") as f:  # ids that match no interaction: nothing is left
        f.write("item_id,text,categories\n" + "".join(f"x{i},,c1\n" for i in items))
    expected = (f"no interactions left to split: {len(log)} interactions in, {len(log)} dropped as unknown items "
                f"\\(not in the item table\\), 0 as bad rows; {len(items)} items kept, 0 dropped for having "
                "neither text nor a category")
    with pytest.raises(DegenerateSplit, match=expected):
        run_example_gen(config, examples)
    import subprocess
    import sys

    with open(tmp_path / "inter.csv", "a") as f:  # a bad row: the step stops inside a Beam transform
        f.write("9,x1,five,1000\n")
    command = [sys.executable, "-m", "llm_hardneg.components.example_gen", "--output-dir", str(tmp_path / "cli"),
               "--source", "generic", "--interactions", str(tmp_path / "inter.csv"),
               "--items", str(tmp_path / "items.csv")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'inter.csv'}:{len(log) + 2}: field 'rating': not a number: 'five' (set "
        "bad_rows='dead_letter' to drop such rows instead)", "(run with --verbose for the traceback)"]


def test_duplicate_item_ids(tmp_path):
    summary, _ = run(tmp_path, movies_extra=("3::Movie number 3 (1993)::Horror|Romance",))  # same text as id 3
    assert summary["dropped"]["repeated_item_row"] == 1 and summary["items_out"] == 40
    with pytest.raises(Exception, match=r"item id '3' appears 2 times with different text"):
        run(tmp_path, movies_extra=("3::Another title::Drama",))


def test_empty_input_file(tmp_path):
    data = str(tmp_path / "ml")
    helpers.write_movielens(data)
    open(os.path.join(data, "ratings.dat"), "w").close()
    with pytest.raises(Exception, match=r"ratings.dat:0: field '<file>': empty input file"):
        run_example_gen(ExampleGenConfig.movielens(data, bad_rows="dead_letter"), str(tmp_path / "out"))


def test_user_with_only_negatives_is_kept_and_counted(tmp_path):
    summary, _ = run(tmp_path, extra_ratings=("500::1::1::1100", "500::2::2::1250"))
    assert summary["users_without_positives"] >= 1
    assert summary["train_examples"] + summary["eval_examples"] == 602


def test_nan_embedding_is_an_error():
    from apache_beam.ml.inference.base import PredictionResult

    from llm_hardneg.components.item_embedder.pipeline import _to_row

    with pytest.raises(ValueError, match=r"item 'x': the text model produced a non-finite embedding"):
        _to_row(("x", PredictionResult("some text", np.array([0.1, np.nan], np.float32))))


def test_empty_cluster_is_kept_and_counted():
    from llm_hardneg.components.item_clusterer import core

    summary = core.size_summary(np.array([0, 0, 2, 2, 2]), 4)
    assert summary["empty_clusters"] == 2 and summary["sizes"] == [2, 0, 3, 0]


def test_amazon_source(tmp_path):
    reviews = [{"reviewerID": f"U{u}", "asin": f"B{i}", "overall": float(1 + (u + i) % 5),
                "unixReviewTime": 1_400_000_000 + 1000 * u + i} for u in range(8) for i in range(5)]
    meta = [{"asin": f"B{i}", "title": f"Gift card {i}", "brand": "Acme", "category": ["Gift Cards", f"c{i % 2}"]}
            for i in range(5)] + [{"asin": "B9", "title": "", "category": []}]
    for name, rows in (("reviews.json.gz", reviews), ("meta.json.gz", meta)):
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    summary = run_example_gen(ExampleGenConfig(source="amazon", interactions=str(tmp_path / "reviews.json.gz"),
                                               items=str(tmp_path / "meta.json.gz")), str(tmp_path / "out"))
    assert summary["interactions_in"] == 40 and summary["train_examples"] + summary["eval_examples"] == 40
    assert summary["items_out"] == 5 and summary["dropped"]["item_without_text_or_category"] == 1
    import pyarrow.parquet as pq

    items = {r["item_id"]: r for r in pq.read_table(tmp_path / "out" / "items" / "items.parquet").to_pylist()}
    assert items["B1"]["text"] == "Gift card 1. Brand: Acme" and items["B1"]["categories"] == ["Gift Cards", "c1"]


def test_tfds_source_with_a_mocked_prepared_dataset(tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def as_dataset(self, *args, **kwargs):
        if "ratings" in self.name + str(self.builder_config.name):
            rows = [{"movie_id": str(1 + i % 3), "user_id": str(i % 4), "user_rating": float(1 + i % 5),
                     "timestamp": 100 + i, "movie_title": "t", "movie_genres": [0]} for i in range(20)]
        else:
            rows = [{"movie_id": str(i), "movie_title": f"Film {i}", "movie_genres": [i, 7]} for i in (1, 2, 3)]
        keys = rows[0].keys()
        features = {k: v for k, v in self.info.features.items() if k in keys}
        return tf.data.Dataset.from_generator(
            lambda: iter(rows), output_signature={k: tf.TensorSpec(shape=f.shape, dtype=f.dtype)
                                                  for k, f in features.items()})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        summary = run_example_gen(ExampleGenConfig(source="tfds", interactions="movielens/1m-ratings",
                                                   items="movielens/1m-movies"), str(tmp_path))
    assert summary["interactions_in"] == 20 and summary["items_out"] == 3
    assert summary["train_examples"] + summary["eval_examples"] == 20
    import pyarrow.parquet as pq

    items = {r["item_id"]: r for r in pq.read_table(tmp_path / "items" / "items.parquet").to_pylist()}
    assert items["2"]["categories"] == ["Animation", "Drama"] and items["2"]["text"].startswith("Film 2. Genres:")

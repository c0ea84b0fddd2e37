"""Synthetic interactions and items of any size, in the generic input format (for cost measurements).

    python -m benchmarks.synthetic --out /tmp/synth --items 100000 --users 50000 --interactions 5000000 \
        [--format csv|parquet] [--families 300] [--seed 0] [--files 4]

then `--example_gen.source generic --example_gen.interactions /tmp/synth/interactions.csv
--example_gen.items /tmp/synth/items.csv`. SYNTHETIC data: it has the shape of real data, not its
signal, so use it to measure cost, never quality.

Model: item i belongs to latent family i % F and has Zipf popularity (exponent `zipf`) by its rank
i // F inside its family, and the families themselves are Zipf-popular by index; each user has a
favourite family (Zipf too) and takes `taste` of their interactions from it, the rest from the
whole catalogue by popularity. Timestamps are the interaction's position (strictly increasing), so
every user's sequence is in time order. Ratings 1-5 (about 85% >= 3). Item text names its family
with three family words (what an LLM clusters on); categories name a coarse group of families.

Memory is constant in the number of interactions (written in chunks of `chunk` rows) and
O(items / F + F) for the inverse-CDF tables; the same seed writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import time

import numpy as np

WORDS = ("amber azure basalt birch cedar cobalt coral crimson dune ember fern flint frost garnet granite harbor "
         "hazel indigo iris ivory jade juniper lagoon lava linen lotus maple marble meadow mesa mint moss "
         "nectar nickel oak obsidian ochre olive onyx opal orchid pearl pine plum quartz raven reef ruby "
         "saffron sage sand sapphire scarlet shale silver slate spruce steel storm sumac tide timber topaz "
         "tundra umber velvet willow zinc acoustic arcade atlas ballad beacon canvas cipher comet delta "
         "drift echo fable galaxy glyph harvest horizon jigsaw kernel lantern legend mosaic nebula nomad "
         "orbit paradox pixel prism quest relic rhythm saga signal sonnet summit tempo vertex voyage").split()
RATING_P = np.array([0.05, 0.10, 0.25, 0.30, 0.30])


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def family_words(families: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    return [" ".join(rng.choice(WORDS, size=3, replace=False)) for _ in range(families)]


class Generator:
    def __init__(self, items: int, users: int, families: int, seed: int, taste: float = 0.7, zipf: float = 1.0):
        if items < 1 or users < 1 or not 1 <= families <= items:
            raise ValueError(f"need items >= 1, users >= 1 and 1 <= families <= items, got items={items}, "
                             f"users={users}, families={families}")
        if not 0.0 <= taste <= 1.0:
            raise ValueError(f"taste must be in [0, 1], got {taste}")
        self.items, self.users, self.families, self.taste = items, users, families, taste
        self.rng = np.random.default_rng(seed)
        self.family_cdf = zipf_cdf(families, zipf)
        self.rank_cdf = zipf_cdf(-(-items // families), zipf)  # ranks inside a family
        self.favourite = np.searchsorted(self.family_cdf, np.random.default_rng(seed + 2).random(users))

    def _items_of(self, family: np.ndarray) -> np.ndarray:
        rank = np.searchsorted(self.rank_cdf, self.rng.random(family.size))
        item = family + rank * self.families
        too_far = item >= self.items  # the last rank exists only for the first families
        item[too_far] = family[too_far] + np.maximum(rank[too_far] - 1, 0) * self.families
        return item

    def interactions(self, start: int, count: int) -> dict[str, np.ndarray]:
        user = self.rng.integers(0, self.users, size=count)
        from_taste = self.rng.random(count) < self.taste
        family = np.where(from_taste, self.favourite[user],
                          np.searchsorted(self.family_cdf, self.rng.random(count)))
        rating = self.rng.choice(np.arange(1, 6), size=count, p=RATING_P)
        return {"user_id": user, "item_id": self._items_of(family), "rating": rating,
                "timestamp": np.arange(start, start + count, dtype=np.int64) + 1_000_000_000}


def item_texts(index: np.ndarray, families: int, seed: int = 0) -> list[str]:
    """The text of items `index`: three words of the item's family (index % families), what an LLM clusters on."""
    words = family_words(families, seed)
    return [f"{words[f]} item {i}: a {words[f].split()[0]} thing, model {i % 997}"
            for i, f in zip(index, index % families)]


def write(out: str, items: int, users: int, interactions: int, families: int = 0, seed: int = 0,
          fmt: str = "csv", chunk: int = 1_000_000, log=print, files: int = 1) -> dict:
    """Writes out/interactions.<fmt> (files > 1: out/interactions-KKKKK-of-NNNNN.<fmt>, consecutive ranges of
    the same rows, and paths["interactions"] is their glob) and out/items.<fmt>; returns counts and paths."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be 'csv' or 'parquet', got {fmt!r}")
    if interactions < 1:
        raise ValueError(f"interactions must be >= 1, got {interactions}")
    if not 1 <= files <= interactions:
        raise ValueError(f"files must be in [1, interactions], got {files}")
    families = families or max(1, int(round(np.sqrt(items))))
    generator = Generator(items, users, families, seed)
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, f"{name}.{fmt}") for name in ("interactions", "items")}
    names = [paths["interactions"]] if files == 1 else [
        os.path.join(out, f"interactions-{k:05d}-of-{files:05d}.{fmt}") for k in range(files)]
    if files > 1:
        paths["interactions"] = os.path.join(out, f"interactions-*-of-{files:05d}.{fmt}")
    bounds = [interactions * k // files for k in range(files + 1)]  # file k holds rows [bounds[k], bounds[k+1])
    started = time.monotonic()
    writers = [_Writer(name, fmt, ("user_id", "item_id", "rating", "timestamp")) for name in names]
    for start in range(0, interactions, chunk):  # the same chunks (random stream) whatever `files` is
        part = generator.interactions(start, min(chunk, interactions - start))
        columns = {"user_id": np.char.add("u", part["user_id"].astype(str)),
                   "item_id": np.char.add("i", part["item_id"].astype(str)),
                   "rating": part["rating"].astype(np.float64), "timestamp": part["timestamp"]}
        end = start + len(part["rating"])
        for k, writer in enumerate(writers):
            lo, hi = max(start, bounds[k]), min(end, bounds[k + 1])
            if lo < hi:
                writer.write({name: values[lo - start:hi - start] for name, values in columns.items()})
        log(f"[synthetic] {end:,}/{interactions:,} interactions ({end / (time.monotonic() - started):,.0f}/s)")
    for writer in writers:
        writer.close()
    writer = _Writer(paths["items"], fmt, ("item_id", "text", "categories"))
    for start in range(0, items, chunk):
        index = np.arange(start, min(items, start + chunk))
        writer.write({"item_id": np.char.add("i", index.astype(str)), "text": item_texts(index, families, seed),
                      "categories": [[f"group{f % 20}"] for f in index % families]})
    writer.close()
    log(f"[synthetic] {interactions:,} interactions, {items:,} items in {families:,} families, {users:,} users -> "
        f"{out} ({time.monotonic() - started:.0f}s; SYNTHETIC: for cost measurements, not quality)")
    return {"items": items, "users": users, "interactions": interactions, "families": families, **paths}


def write_embeddings(path: str, items: int, dim: int = 384, families: int = 0, seed: int = 0,
                     chunk: int = 100_000) -> int:
    """An item_embedder-shaped Parquet file (item_id 'i<k>', unit-norm float32 embedding) for `items` items:
    item k = its family's direction (k % F) plus noise, so k-means has structure to find. SYNTHETIC: for the
    clusterer's cost at sizes the text model would take hours to embed. Memory O(chunk * dim + F * dim)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    families = families or max(1, int(round(np.sqrt(items))))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((families, dim)).astype(np.float32)
    schema = pa.schema([("item_id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, items, chunk):
            index = np.arange(start, min(items, start + chunk))
            x = centres[index % families] + rng.standard_normal((len(index), dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            offsets = pa.array(np.arange(0, (len(index) + 1) * dim, dim, dtype=np.int32))
            vectors = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))
            writer.write_table(pa.table({"item_id": np.char.add("i", index.astype(str)), "embedding": vectors},
                                        schema=schema), row_group_size=chunk)
    return items


class _Writer:
    """Chunked CSV (categories joined by '|') or Parquet (categories as a list) writer."""

    def __init__(self, path: str, fmt: str, columns: tuple[str, ...]):
        self.path, self.fmt, self.columns, self.parquet = path, fmt, columns, None
        if fmt == "csv":
            self.handle = gzip.open(path, "wt", newline="") if path.endswith(".gz") else open(path, "w", newline="")
            self.csv = csv.writer(self.handle)
            self.csv.writerow(columns)

    def write(self, columns: dict) -> None:
        if self.fmt == "csv":
            values = [columns[c] if c != "categories" else ["|".join(v) for v in columns[c]] for c in self.columns]
            self.csv.writerows(zip(*values))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: columns[c] if c != "categories" else pa.array(columns[c], pa.list_(pa.string()))
                          for c in self.columns})
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.path, table.schema)
        self.parquet.write_table(table)

    def close(self) -> None:
        if self.fmt == "csv":
            self.handle.close()
        elif self.parquet is not None:
            self.parquet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--families", type=int, default=0, help="latent item families (0 = sqrt(items))")
    parser.add_argument("--format", default="csv", choices=("csv", "parquet"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=1, help="split the interactions into this many files")
    args = parser.parse_args()
    write(args.out, args.items, args.users, args.interactions, args.families, args.seed, args.format,
          files=args.files)


if __name__ == "__main__":
    main()

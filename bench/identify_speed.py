"""identify speed, each part against a baseline measured in the same run:

1. **Throughput** over a folder of new photos (phone-like JPEGs, in encounters of 4) against a catalogue of
   star_dataset size: ``identify_photos`` + ``matches_document`` + ``matches_texts`` written (hashing, the
   known-photo check, embedding, ranking, pooling, verdicts, both output files) against the bare model on
   the same photos: the textbook loop ``load_rgb`` -> eval transform -> batch -> ``model(batch)``, same
   decoding, same batch size. Rounds alternate ours/bare; the medians over rounds are compared, per
   wall-clock second and per CPU second of the process (the steadier one on a shared machine). For context
   the forward pass alone on pre-decoded tensors is given too.
2. **Search** for one photo against a catalogue of 100,000 photos (synthetic, clustered, 512-d):
   ``CatalogueIndex.rank`` (the float16 pre-selection, then ``rank_individuals`` on the few individuals
   that can make the top k) against the floor of any exact float32 search, one matrix-vector product
   over the gallery (numpy), and against ``rank_individuals`` called plainly on the whole float32 gallery.
3. **Opening** a catalogue of 140,000 photos (512-d) and loading every embedding for search
   (``open_catalogue`` + ``load_index``) against ``np.load`` of the same matrix from a ``.npy`` file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from megastarid.core.files import atomic_write_all, text_writer
from megastarid.data.images import load_rgb
from megastarid.data.transforms import build_eval_transform
from megastarid.evaluation.individuals import IdentityCodes, rank_individuals
from megastarid.evaluation.openset import Calibration
from megastarid.identification.identify import identify_photos
from megastarid.identification.index import CatalogueIndex
from megastarid.identification.matches import matches_document, matches_texts
from megastarid.identification.store import PhotoRecord
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import MODEL, ROOT
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.embedder import checkpoint_embedder
from megastarid.models.network import build_model


def clustered(photos: int, individuals: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around one centre per individual (every individual has a photo), and the owners."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((individuals, dim), dtype=np.float32)
    owner = np.concatenate([np.arange(individuals), rng.integers(0, individuals, photos - individuals)])
    emb = centres[owner] / np.sqrt(dim) + 0.6 * rng.standard_normal(
        (photos, dim), dtype=np.float32
    ) / np.sqrt(dim)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), owner


def fill_catalogue(path: Path, emb: np.ndarray, owner: np.ndarray, record: dict | None = None) -> None:
    """A real catalogue file holding ``emb`` (photo i of individual ``owner[i]``), in 10,000-photo commits."""
    with open_catalogue(path, create=True) as store:
        with store.transaction():
            store.set_meta(ROOT, str(path.parent))
            if record is not None:
                store.set_meta(MODEL, record)
        for start in range(0, len(emb), 10_000):
            records = [
                PhotoRecord(
                    f"Site/star{owner[i]:05d}/2024-{1 + i % 12:02d}-01/img{i}.jpg",
                    f"Site/star{owner[i]:05d}",
                    f"2024-{1 + i % 12:02d}-01",
                    f"2024-{1 + i % 12:02d}-01",
                    "Site",
                    "",
                    f"{i:064x}",
                    4000,
                    3000,
                    3_000_000,
                    0,
                )
                for i in range(start, min(start + 10_000, len(emb)))
            ]
            with store.transaction():
                store.add_photos(records, [row.tobytes() for row in emb[start : start + 10_000]])
        with store.transaction():
            store.refresh_individuals()


def timed(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


# -- 1. throughput -----------------------------------------------------------------------------------------


def write_photos(folder: Path, count: int, size: tuple[int, int], per_encounter: int) -> list[str]:
    """Smooth random JPEGs (like photos, unlike noise) in encounter folders."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        image = small.resize(size, Image.Resampling.BICUBIC)
        path = folder / f"dive{i // per_encounter:03d}" / f"IMG_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def throughput(args: argparse.Namespace, work: Path) -> None:
    torch.manual_seed(0)
    checkpoint = work / "best.pth"
    config = {"backbone": args.backbone, "embedding_dim": args.dim, "image_size": args.image_size}
    save_checkpoint(checkpoint, build_model(args.backbone, embedding_dim=args.dim), config)
    embedder = checkpoint_embedder(checkpoint, torch.device("cpu"), batch_size=args.batch_size)
    emb, owner = clustered(args.catalogue_photos, args.catalogue_photos // 8, args.dim, seed=1)
    catalogue = work / "stars.sqlite"
    fill_catalogue(catalogue, emb, owner, embedder.record())
    photos = write_photos(work / "new", args.photos, (args.photo_width, args.photo_height), 4)
    calibration = Calibration("logistic", 0.5, 0.9, coef=12.0, intercept=-7.0)
    store = open_catalogue(catalogue)
    index = load_index(store)
    model, transform, size = embedder.model, build_eval_transform(args.image_size), args.image_size

    def ours() -> None:
        result = identify_photos(store, index, embedder, photos, 5, "folder", calibration)
        texts = matches_texts(matches_document(result, store, index))
        atomic_write_all({work / name: text_writer(text) for name, text in texts.items()})

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, len(photos), args.batch_size):
                batch = torch.stack(
                    [transform(load_rgb(p, size)) for p in photos[start : start + args.batch_size]]
                )
                model(batch)

    decoded = [torch.stack([transform(load_rgb(p, size)) for p in photos[s : s + args.batch_size]])
               for s in range(0, len(photos), args.batch_size)]  # fmt: skip

    def forward_only() -> None:
        with torch.inference_mode():
            for batch in decoded:
                model(batch)

    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "bare": [], "forward": []}
    ours(), bare()  # warm-up
    for _ in range(args.rounds):
        runs["ours"].append(timed(ours))
        runs["bare"].append(timed(bare))
        runs["forward"].append(timed(forward_only))
    store.close()
    rate = {name: statistics.median(args.photos / wall for wall, _ in r) for name, r in runs.items()}
    per_cpu = {name: statistics.median(args.photos / cpu for _, cpu in r) for name, r in runs.items()}
    print(
        f"\n1. throughput: {args.photos} photos of {args.photo_width}x{args.photo_height} in encounters of "
        f"4, {args.backbone} at {args.image_size} px, batch {args.batch_size}, catalogue of "
        f"{args.catalogue_photos} photos, {args.rounds} rounds, {torch.get_num_threads()} torch threads"
    )
    print(f"{'':<44} {'photos/s (wall)':>16} {'photos per CPU-s':>17}")
    labels = {
        "ours": "identify (hash, embed, rank, pool, write)",
        "bare": "bare loop (decode, transform, forward)",
        "forward": "forward alone on decoded tensors",
    }
    for name, label in labels.items():
        print(f"{label:<44} {rate[name]:>16.1f} {per_cpu[name]:>17.1f}")
    print(
        f"ratio identify/bare: {rate['ours'] / rate['bare']:.3f} (wall), "
        f"{per_cpu['ours'] / per_cpu['bare']:.3f} (CPU time); target >= 0.9"
    )


# -- 2. search ---------------------------------------------------------------------------------------------


def search(args: argparse.Namespace) -> None:
    emb, owner = clustered(args.search_photos, args.search_photos // 14, 512, seed=2)
    labels = np.array([f"Site/star{o:05d}" for o in owner])
    index = CatalogueIndex(Path("bench"), Path("/"), emb, np.arange(len(emb)), IdentityCodes.of(labels), {})
    rng = np.random.default_rng(3)
    picks = rng.integers(0, len(emb), args.queries)
    queries = emb[picks] + 0.6 * rng.standard_normal((args.queries, 512), dtype=np.float32) / np.sqrt(512)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    first = timed(lambda: index.rank(queries[:1], 5))[0]  # makes the float16 copy and checks it
    gallery = torch.from_numpy(emb)
    ways: dict[str, Callable[[np.ndarray], object]] = {
        "ours": lambda q: index.rank(q, 5),
        "matvec": lambda q: gallery @ torch.from_numpy(q[0]),
        "plain": lambda q: rank_individuals(q, emb, index.codes, k=5),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for query in queries:  # interleaved, so load from other processes hits all alike
        for name, way in ways.items():
            times[name].append(timed(lambda way=way, query=query: way(query[None]))[0] * 1000)
    agree = all(
        index.rank(q[None], 5).top_names(j) == rank_individuals(q[None], emb, labels, 5).top_names(j)
        for q in queries[:10]
        for j in range(5)
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    p90 = {name: float(np.percentile(t, 90)) for name, t in times.items()}
    print(
        f"\n2. search: one photo against {len(emb)} catalogue photos ({len(index.names)} individuals, "
        f"512-d), {args.queries} queries, {torch.get_num_threads()} torch threads; first call "
        f"{first * 1000:.0f} ms (the float16 copy and its check, once per open)"
    )
    print(f"{'':<58} {'median ms':>10} {'p90 ms':>8}")
    labels_ = {
        "ours": "CatalogueIndex.rank (float16 pre-selection, exact)",
        "matvec": "one float32 matrix-vector product (torch)",
        "plain": "rank_individuals on the whole float32 gallery",
    }
    for name, label in labels_.items():
        print(f"{label:<58} {median[name]:>10.1f} {p90[name]:>8.1f}")
    print(
        f"ours vs one matrix-vector product: {median['matvec'] / median['ours']:.2f}x faster; vs plain "
        f"rank_individuals: {median['plain'] / median['ours']:.2f}x; same top 5 as rank_individuals: "
        f"{agree}; target <= 20 ms"
    )


# -- 3. opening --------------------------------------------------------------------------------------------


def opening(args: argparse.Namespace, work: Path) -> None:
    emb, owner = clustered(args.open_photos, 10_772, 512, seed=4)
    catalogue = work / "big.sqlite"
    start = time.perf_counter()
    fill_catalogue(catalogue, emb, owner)
    wall = time.perf_counter() - start
    raw = work / "big.npy"
    np.save(raw, emb)
    del emb
    ours, floor = [], []
    for _ in range(args.rounds):

        def load() -> None:
            with open_catalogue(catalogue) as store:
                load_index(store)

        ours.append(timed(load)[0])
        floor.append(timed(lambda: np.load(raw))[0])
    print(
        f"\n3. opening: {args.open_photos} photos, 512-d, file {catalogue.stat().st_size / 2**20:.0f} MiB "
        f"(written in {wall:.0f} s), {args.rounds} rounds"
    )
    print(f"{'':<50} {'median s':>9} {'best s':>7}")
    print(f"{'open_catalogue + load_index':<50} {statistics.median(ours):>9.2f} {min(ours):>7.2f}")
    print(f"{'np.load of the same matrix (.npy)':<50} {statistics.median(floor):>9.2f} {min(floor):>7.2f}")
    print(f"ratio: {statistics.median(ours) / statistics.median(floor):.1f}x the raw read; target <= 2 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dim", type=int, default=512, help="embedding size of the throughput model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--photo-width", type=int, default=1600)
    parser.add_argument("--photo-height", type=int, default=1200)
    parser.add_argument("--catalogue-photos", type=int, default=8000)
    parser.add_argument("--search-photos", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--open-photos", type=int, default=140_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=("throughput", "search", "opening"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "throughput" not in args.skip:
            throughput(args, work)
        if "search" not in args.skip:
            search(args)
        if "opening" not in args.skip:
            opening(args, work)


if __name__ == "__main__":
    main()

"""``cxrlab embed`` and ``cxrlab index build|add|search``: a thin layer over :mod:`cxrlab.retrieval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console, progress

index_app = typer.Typer(help="Similar-case search: a FAISS index of film embeddings with patient timelines.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.add_typer(index_app, name="index")


def embed(source: str = typer.Argument(..., metavar="RUN_OR_BACKBONE",
                                       help="a trained run directory, or a backbone name (ImageNet weights)"),
          data: list[Path] = typer.Argument(..., help="image files, folders of images, or manifests"),
          out: Path = typer.Option(..., "--out", help="embeddings file (Parquet); an existing one is resumed"),
          batch_size: int = typer.Option(32, "--batch-size", min=1),
          precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the CPU has it) | fp32 | bf16"),
          lung_model: Optional[Path] = typer.Option(None, "--lung-model",
                                                    help="lung run for runs whose input needs lung masks")) -> None:
    """Per-image embedding vectors: the input of a run's last linear layer, or a backbone's pooled features."""
    from cxrlab.retrieval import embed as embed_images, read_embeddings

    with progress() as bar:
        tasks: list = []  # the bar appears once the inputs are resolved and the model is loaded

        def report(done: int, total: int) -> None:
            if not tasks:
                tasks.append(bar.add_task("embedding", total=total, status=""))
            bar.update(tasks[0], completed=done, total=total)

        path = embed_images(source, data, out, batch_size=batch_size, precision=precision, lung_model=lung_model,
                            progress=report)
    emb = read_embeddings(path)
    console.print(f"embeddings: [bold]{path}[/]  {len(emb)} images x {emb.dim} dimensions", highlight=False)


@index_app.command("build")
def build(emb: Path = typer.Argument(..., help="embeddings file (cxrlab embed)"),
          out: Path = typer.Option(..., "--out", help="index folder (replaced if it exists)"),
          kind: str = typer.Option("flat", "--kind", help="flat (exact) | ivf | hnsw (approximate, large collections)"),
          nlist: Optional[int] = typer.Option(None, "--nlist", help="IVF lists (default ~4 sqrt(N))")) -> None:
    """Build a similar-case index: cosine similarity (inner product of L2-normalised vectors) + metadata table."""
    from cxrlab.retrieval import CaseIndex, build_index

    options = {"nlist": nlist} if nlist is not None and kind == "ivf" else {}
    path = build_index(emb, out, kind=kind, **options)
    index = CaseIndex.load(path)
    patients = index.meta["patient_id"].nunique()
    console.print(f"index: [bold]{path}[/]  {len(index)} images of {patients} patients, {kind}, "
                  f"{index.dim} dimensions, built in {index.info['build_seconds']:.2f} s", highlight=False)


@index_app.command("add")
def add(index: Path = typer.Argument(..., help="index folder (cxrlab index build)"),
        emb: Path = typer.Argument(..., help="embeddings file of the images to add")) -> None:
    """Add the images of EMB that the index does not hold yet (same embedding source and dimension)."""
    from cxrlab.retrieval import CaseIndex, add_to_index

    path, added = add_to_index(index, emb)
    console.print(f"index: [bold]{path}[/]  {added} images added, {len(CaseIndex.load(path))} in all",
                  highlight=False)


@index_app.command("search")
def search(index: Path = typer.Argument(..., help="index folder (cxrlab index build)"),
           images: list[Path] = typer.Argument(..., help="query image files, folders or manifests"),
           k: int = typer.Option(5, "-k", "--k", min=1, help="number of patients per query"),
           as_json: bool = typer.Option(False, "--json", help="one JSON object per query on stdout")) -> None:
    """Top-k most similar patients per query film, each with the patient's films ordered by offset."""
    from cxrlab.retrieval import CaseIndex

    case_index = CaseIndex.load(index)
    for result in case_index.search([str(p) for p in images], k=k):
        if as_json:
            print(json.dumps(result), flush=True)
            continue
        console.print(f"[bold]{result['query']}[/]", highlight=False)
        if not result["results"]:
            console.print("  (no other patient in the index)")
        for rank, hit in enumerate(result["results"], 1):
            timeline = ", ".join(f"{s['image']} (day {s['offset_days'] if s['offset_days'] is not None else '?'})"
                                 for s in hit["series"])
            console.print(f"  {rank}. {hit['patient_id']}  similarity {hit['similarity']:.3f}  "
                          f"finding {hit['finding']}  best {hit['image']}", highlight=False, soft_wrap=True)
            console.print(f"     series: {timeline}", highlight=False, soft_wrap=True)

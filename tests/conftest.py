"""Shared fixtures: tiny, randomly initialised Stable-Diffusion-architecture models (built by
benchmarks/tiny_models.py), concept sets drawn in code, and the "did not run" summary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks.tiny_models import (
    build_tiny_flux_parts,
    build_tiny_pipeline_parts,
    build_tiny_sd3_parts,
    build_tiny_sdxl_parts,
    build_tiny_unet,
)

REPO = Path(__file__).resolve().parents[1]

# Tiny models gain nothing from intra-op threads, and on a shared CPU the threads' spin-waits
# made a training step ~30x slower (measured: 10 tiny steps 55 s with 2 threads, 1.5 s with 1).
torch.set_num_threads(int(os.environ.get("TEXTLOC_TEST_THREADS", "1")))


@pytest.fixture
def tiny_flux_bundle():
    """A ModelBundle over fresh tiny Flux-architecture diffusers components."""
    from textloc_core.backends.flux_backend import bundle_from_flux

    return bundle_from_flux(**build_tiny_flux_parts())


@pytest.fixture
def tiny_sd3_bundle():
    """A ModelBundle over fresh tiny SD3.5-architecture diffusers components."""
    from textloc_core.backends.sd3_backend import bundle_from_sd3

    return bundle_from_sd3(**build_tiny_sd3_parts())


@pytest.fixture(scope="session")
def tiny_sdxl_parts_builder():
    """``build_tiny_sdxl_parts`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return build_tiny_sdxl_parts


@pytest.fixture
def tiny_sdxl_bundle():
    """A ModelBundle over fresh tiny SDXL-architecture diffusers components."""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    return bundle_from_diffusers(**build_tiny_sdxl_parts())


def run_routed_block(bundle, block: str, slots: torch.Tensor, latent_side: int = 8) -> dict:
    """One plain and one routed forward of a joint-block transformer on ``"photo of a <doll1>
    doll"`` and ``"a cat"``, capturing ``block`` only with token ``slots`` (2, S).

    Returns ``plain`` and ``routed`` outputs, the ``captured`` maps, the ``inputs`` (kwargs) of
    ``block``'s attention in the routed forward, and ``processors`` (block -> processor) before,
    during and after routing."""
    denoiser = bundle.denoiser
    bundle.text.check_token("<doll1>")
    encoded = bundle.text.encode(
        ["photo of a <doll1> doll", "a cat"], {"<doll1>": bundle.text.initial_embedding("doll")}
    )
    latents, t = torch.randn(2, denoiser.latent_channels, latent_side, latent_side), torch.tensor([100, 800])

    def processors():
        return {name: attn.processor for name, attn in denoiser.blocks().items()}

    from textloc_core.attention.cross_attention import AttentionRouter

    router = AttentionRouter(layers={block}, token_slots=slots, keep_grad=False)
    seen = {}
    handle = denoiser.blocks()[block].register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.update(kwargs), with_kwargs=True
    )
    found = {"before": processors()}
    try:
        with torch.no_grad():
            found["plain"] = denoiser.predict(latents, t, encoded.context, encoded.pooled)
            with denoiser.route_attention(router):
                found["during"] = processors()
                found["routed"] = denoiser.predict(latents, t, encoded.context, encoded.pooled)
    finally:
        handle.remove()
    found.update(after=processors(), captured=list(router.captured), inputs=seen)
    return found


@pytest.fixture(scope="session")
def routed_block():
    """``run_routed_block`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return run_routed_block


def check_trained_alike(plain, other) -> None:
    """Two ``TrainResult``s learned the same K/V deltas and token embeddings, to float32 rounding
    (a changed order of operations, as gradient checkpointing's recomputation gives)."""
    for key in plain.kv_deltas:
        torch.testing.assert_close(plain.kv_deltas[key], other.kv_deltas[key], rtol=1e-4, atol=1e-6)
    for token in plain.token_embeddings:
        torch.testing.assert_close(plain.token_embeddings[token], other.token_embeddings[token], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="session")
def trained_alike():
    """``check_trained_alike`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return check_trained_alike


def train_killed_after_step_3(bundle, concept_set, config, checkpoint_dir: Path) -> None:
    """Train ``config`` (a checkpoint every 2 steps) into ``checkpoint_dir``, stopped after step 3
    whose checkpoint is then lost, as if killed before it landed: a resume starts at step 2."""
    import shutil

    from textloc_core.training.loop import train

    done = []
    train(
        bundle,
        concept_set,
        config,
        checkpoint_dir=checkpoint_dir,
        should_stop=lambda: len(done) >= 3,
        on_step=done.append,
    )
    shutil.rmtree(checkpoint_dir / "step-000000003")


@pytest.fixture(scope="session")
def killed_after_step_3():
    """``train_killed_after_step_3`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return train_killed_after_step_3


def check_resume_is_bit_identical(bundle, concept_set, config, tmp_path: Path) -> None:
    """Train ``config`` (4 steps, a checkpoint every 2) straight through, and again killed after
    step 3 (``train_killed_after_step_3``) and resumed from step 2: the history, K/V deltas and
    token embeddings must match bit for bit."""
    from textloc_core.training.loop import train

    full = train(bundle, concept_set, config, checkpoint_dir=tmp_path / "a")
    train_killed_after_step_3(bundle, concept_set, config, tmp_path / "b")
    resumed = train(bundle, concept_set, config, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.steps_done == 4 and len(resumed.history) == 4
    assert resumed.history == full.history
    for key in full.kv_deltas:
        assert torch.equal(full.kv_deltas[key], resumed.kv_deltas[key]), key
    for token in full.token_embeddings:
        assert torch.equal(full.token_embeddings[token], resumed.token_embeddings[token]), token


@pytest.fixture(scope="session")
def resume_is_bit_identical():
    """``check_resume_is_bit_identical`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return check_resume_is_bit_identical


@pytest.fixture(scope="session")
def tiny_unet_builder():
    """``build_tiny_unet`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return build_tiny_unet


@pytest.fixture(scope="session")
def load_script():
    """Import ``scripts/NAME.py`` as a module (scripts/ is not a package)."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_parts():
    """Fresh tiny diffusers components (tests may train on them)."""
    return build_tiny_pipeline_parts()


@pytest.fixture
def tiny_bundle(tiny_parts):
    """A ModelBundle over fresh tiny diffusers components."""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    return bundle_from_diffusers(**tiny_parts)


def square_mask(top: int, left: int, size: int, side: int) -> torch.Tensor:
    """A ``side`` x ``side`` mask with a ``size`` x ``size`` square of ones at (top, left)."""
    mask = torch.zeros(side, side)
    mask[top : top + size, left : left + size] = 1
    return mask


@pytest.fixture(scope="session")
def doll_bucket_set():
    """Builds the trainer tests' two-concept set (``<doll1>`` doll, ``<bucket1>`` bucket): one
    random ``side``-pixel photo per entry of ``placements`` (torch seeded with ``seed`` first),
    each with a ``size``-pixel square mask at ``{concept: (top, left)}`` for the concepts it names."""
    from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet

    def build(placements: list[dict[str, tuple[int, int]]], *, side: int, size: int, seed: int) -> ConceptSet:
        torch.manual_seed(seed)
        concepts = [Concept("doll", "<doll1>", "doll"), Concept("bucket", "<bucket1>", "bucket")]
        images = [
            ConceptImage(torch.rand(3, side, side), {name: square_mask(*at, size, side) for name, at in placed.items()})
            for placed in placements
        ]
        return ConceptSet(concepts, images)

    return build


TWO_CONCEPT_PLACEMENTS = [{"doll": (1, 1), "bucket": (9, 8)}, {"bucket": (2, 9)}, {"doll": (8, 2), "bucket": (1, 8)}]
"""Where the doll and bucket squares sit in the three 16-pixel photos of ``two_concepts``
(the second photo names only the bucket)."""


@pytest.fixture(scope="session")
def two_concepts_at(doll_bucket_set):
    """Builds the trainer tests' concept set at ``side`` pixels (default 16): three photos of a
    doll and a bucket, the doll not named in the second, squares and positions scaled with the
    side; a fresh set each call."""

    def at(side: int = 16):
        s = side // 16
        placements = [
            {name: (top * s, left * s) for name, (top, left) in placed.items()} for placed in TWO_CONCEPT_PLACEMENTS
        ]
        return doll_bucket_set(placements, side=side, size=6 * s, seed=3)

    return at


@pytest.fixture
def two_concepts(two_concepts_at):
    """The trainer tests' concept set at 16 pixels (``two_concepts_at``)."""
    return two_concepts_at()


@pytest.fixture
def paper_dataset() -> Path:
    """The paper's dataset (read-only, outside the repo); skips loudly when absent."""
    from textloc_core.data.readers import find_paper_dataset

    root = find_paper_dataset(REPO)
    if root is not None and (root / "multi_concept").is_dir():
        return root
    pytest.skip("PAPER DATASET NOT FOUND: set TEXTLOC_PAPER_DATASET to ../shared/paper-dataset to run this test")


def write_constant_png(path: Path, width: int, height: int, value: int = 128, gray: bool = False) -> Path:
    """A ``width x height`` PNG of one colour, written row by row: a 12000x12000 RGB file is
    about 445 KB on disk but 432 MB decoded (a decompression bomb), and writing it needs no
    more memory than one row."""
    import struct
    import zlib

    channels, colour_type = (1, 0) if gray else (3, 2)
    row = b"\x00" + bytes([value]) * (width * channels)  # filter byte "none", then the pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return Path(path)


@pytest.fixture(scope="session")
def constant_png():
    """``write_constant_png`` for tests (decompression bombs, large photos)."""
    return write_constant_png


# --- Suites that could not run say so loudly at the end of the session -------------------
# Integration and browser suites need things this machine may lack (a ComfyUI tree,
# Chromium); they skip through ``not_run``, which also prints "<AREA> DID NOT RUN: why"
# in the session summary, so a skipped suite never reads as a pass.

_NOT_RUN = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_NOT_RUN] = {}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # a wrapper, so these lines come after pytest's own short summary: the last thing read
    result = yield
    for area, reason in config.stash.get(_NOT_RUN, {}).items():
        terminalreporter.write_sep("!", f"{area} DID NOT RUN: {reason}", red=True, bold=True)
    return result


@pytest.fixture(scope="session")
def not_run(request):
    """``not_run(area, reason, required_env=None)``: skip loudly, or fail when ``required_env`` is set.

    CI sets TEXTLOC_REQUIRE_COMFYUI=1 once it has laid ComfyUI out, so a harness that
    cannot find it fails instead of skipping.
    """

    def skip(area: str, reason: str, required_env: str | None = None):
        if required_env and os.environ.get(required_env):
            pytest.fail(f"{area} cannot run ({required_env} is set): {reason}", pytrace=False)
        request.config.stash[_NOT_RUN][area] = reason
        pytest.skip(f"{area} DID NOT RUN: {reason}")

    return skip

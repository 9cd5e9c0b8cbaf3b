"""WER per language through the real server vs openai-whisper's own transcribe(), same weights and settings.

Every real clip of ../shared/eval (not those its README marks as not for WER),
in beam 5 and greedy. Writes docs/accuracy.md. Run: .venv/bin/python scripts/eval_wer.py
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr_server.config import Config
from asr_server.engine.audio_decoding import decode_wav
from asr_server.precision_names import PRECISION_SETTINGS
from tests.harness import (
    REPO,
    Clip,
    ServerProcess,
    load_manifest,
    load_reference_model,
    reference_transcribe,
    transcribe,
    wer,
)

# Issue 23's WER rule for a fast default, in WER points above exact.
POOLED_LIMIT = 0.3
LANGUAGE_LIMIT = 1.0


def run_server(clips: list[Clip], beam: int, precision: str = "exact") -> list[str]:
    texts = []
    env = {"ASR_BEAM_SIZE": str(beam), "SERVER_API_KEY": "", "ASR_PRECISION": precision}
    with ServerProcess(env=env) as server:
        for clip in clips:
            reply = transcribe(server.url, clip.path.read_bytes(), language=clip.lang)
            texts.append(reply["text"])
    return texts


def run_reference(clips: list[Clip], beam: int) -> list[str]:
    model = load_reference_model(Config().model_path)
    texts = []
    for clip in clips:
        samples = decode_wav(clip.path.read_bytes(), 1e9).samples
        texts.append(reference_transcribe(model, samples, clip.lang, beam))
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy.md")
    parser.add_argument("--precisions", nargs="+", choices=PRECISION_SETTINGS[1:],
                        help="measure only ASR_PRECISION: each of these against the first (exact), all "
                             "through the server in every --beams, with issue 23's rule, into --out")
    args = parser.parse_args()
    clips = load_manifest()
    if args.precisions:
        return precision_cost(clips, args.beams, args.precisions, args.out)
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_lang[clip.lang].append(i)
    rows = []
    for beam in args.beams:
        server_texts = run_server(clips, beam, "exact")
        ref_texts = run_reference(clips, beam)
        for lang, idx in sorted(by_lang.items()):
            refs = [clips[i].text for i in idx]
            s = wer(refs, [server_texts[i] for i in idx], lang)
            r = wer(refs, [ref_texts[i] for i in idx], lang)
            rows.append((beam, lang, len(idx), s, r))
            print(f"beam={beam} {lang}: server {s:.2f} reference {r:.2f}", flush=True)
    audio_min = sum(c.duration for c in clips) / 60
    lines = [
        "# Accuracy: the server vs openai-whisper's own transcribe()",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()} ({platform.processor() or 'cpu'}), "
        f"model `base` converted by `make model`, {len(clips)} real clips ({audio_min:.1f} min) "
        "from `../shared/eval/` (all but the clip its README marks as not for WER).",
        "",
        "Command: `.venv/bin/python scripts/eval_wer.py`",
        "",
        "WER in percent after Whisper's normalisers (English: `EnglishTextNormalizer`, others: "
        "`BasicTextNormalizer`), corpus-level per language. Both sides get the language code, "
        "the same 16 kHz samples, temperature fallback (0.0 to 1.0 by 0.2) and best_of 5; "
        "the server adds its VAD gate.",
        "",
        "| decoding | language | clips | server WER | transcribe() WER | server − reference |",
        "|---|---|---|---|---|---|",
    ]
    for beam, lang, n, s, r in rows:
        name = "beam 5" if beam == 5 else ("greedy" if beam == 1 else f"beam {beam}")
        lines.append(f"| {name} | {lang} | {n} | {s:.2f} | {r:.2f} | {s - r:+.2f} |")
    lines += ["", "Speed is measured by `scripts/bench.py` (docs/benchmarks.md), not here.",
              "Identical figures are expected: at temperature 0 both run the same decoder on the same",
              "samples, and the VAD gate dropped nothing on these clips. They can part only where a",
              "window falls back to sampling (temperature > 0), which is random on both sides."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


def precision_cost(clips: list[Clip], beams: list[int], precisions: list[str], out: Path) -> int:
    """WER with each ASR_PRECISION through the server, against the first (exact), and issue 23's rule:
    a precision may be a default only if, at every beam, the WER pooled over all clips is at most
    POOLED_LIMIT points above exact and no language more than LANGUAGE_LIMIT above."""
    langs = sorted({c.lang for c in clips})
    base, others = precisions[0], precisions[1:]
    heading = "## The WER of `ASR_PRECISION`"
    lines = ["", heading, "",
             f"Command: `.venv/bin/python scripts/eval_wer.py --precisions {' '.join(precisions)}`: the same "
             f"{len(clips)} clips through the server, each precision in a server of its own "
             f"({datetime.date.today()}, {platform.machine()}, {cpu_flags()}). The rule: at most "
             f"{POOLED_LIMIT} points above {base} pooled over all clips, and no language more than "
             f"{LANGUAGE_LIMIT} above, at every decoding.", "",
             "| decoding | language | " + " | ".join(f"{p} WER" for p in precisions) + " | "
             + " | ".join(f"{p} − {base}" for p in others) + " |",
             "|---|---|" + "---|" * (2 * len(precisions) - 1)]
    verdicts: dict[str, list[str]] = {p: [] for p in others}
    for beam in beams:
        name = "greedy" if beam == 1 else f"beam {beam}"
        texts = {p: run_server(clips, beam, p) for p in precisions}
        for lang in [*langs, "all"]:
            idx = [i for i, c in enumerate(clips) if lang in ("all", c.lang)]
            refs, codes = [clips[i].text for i in idx], [clips[i].lang for i in idx]
            wers = {p: wer(refs, [texts[p][i] for i in idx], codes) for p in precisions}
            limit = POOLED_LIMIT if lang == "all" else LANGUAGE_LIMIT
            for p in others:
                if wers[p] - wers[base] > limit:
                    verdicts[p].append(f"{name} {lang} {wers[p] - wers[base]:+.2f}")
            label = "**all, pooled**" if lang == "all" else lang
            lines.append(f"| {name} | {label} | " + " | ".join(f"{wers[p]:.2f}" for p in precisions) + " | "
                         + " | ".join(f"{wers[p] - wers[base]:+.2f}" for p in others) + " |")
            print(lines[-1], flush=True)
    lines.append("")
    for p in others:
        passed = "passes the rule" if not verdicts[p] else "fails the rule: " + ", ".join(verdicts[p])
        lines.append(f"- {p}: {passed}.")
        print(lines[-1], flush=True)
    replace_section(out, heading, lines)
    return 0


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    named = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    return "flags " + " ".join(f for f in named if f in flags)


def replace_section(out: Path, heading: str, lines: list[str]) -> None:
    """Put ``lines`` (which start with a blank line and ``heading``) in place of that section of ``out``."""
    text = out.read_text()
    if heading in text:
        start = text.index("\n" + heading)
        following = text.find("\n## ", start + 1)
        text = text[:start] + (text[following:] if following >= 0 else "\n")
    out.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

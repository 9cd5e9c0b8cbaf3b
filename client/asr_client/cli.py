"""The ``asr-client`` command: transcribe files and print or write each result; ``machine-id`` prints the id.

Every file is its own request; a failed file is reported on stderr and the rest
still run, and the exit code is that of the first failure (the table is in
``--help`` and client/README.md). The API key comes from ``--key`` or
``ASR_API_KEY`` and is never printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from asr_client.api import DEFAULT_SERVER, Result, transcribe
from asr_client.errors import AsrClientError, exit_code_table
from asr_client.live import DEFAULT_LIVE_SERVER, file_chunks, live, microphone_chunks
from asr_client.machine_id import machine_id
from asr_client.progress import Progress
from asr_client.subtitles import srt, vtt

EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asr-client", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Transcribe audio files with an asr-server. Any format soundfile reads is sent as "
                    "WAV. `asr-client machine-id` prints this machine's id.",
        epilog="exit codes (with several files: the first failure's; the other files still run):\n"
               + exit_code_table())
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, Ogg, MP3, ...)")
    p.add_argument("--server", default=os.environ.get("ASR_SERVER", DEFAULT_SERVER),
                   help="ws://host:port of the server (env ASR_SERVER; default %(default)s)")
    p.add_argument("--key", default=None,
                   help="API key (default: env ASR_API_KEY; the environment keeps it out of `ps`)")
    p.add_argument("--language", default=None, help="ISO 639-1 code such as bg or en (default: detect)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                   help="translate gives English text")
    p.add_argument("--format", choices=tuple(EXTENSIONS), default="text",
                   help="text (the best text), json (the whole result), srt or vtt subtitles")
    p.add_argument("--word-timestamps", action="store_true", help="ask for per-word times (in json)")
    p.add_argument("--prompt", default=None, help="names and terms the speaker uses")
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=None,
                   help="ask for (or refuse) LLM correction (default: the server's)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="write DIR/<stem>.<txt|json|srt|vtt> instead of printing")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each answer")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="the progress bar on stderr (default: when stderr is a terminal)")
    return p


def render(result: Result, fmt: str, name: str | None) -> str:
    """One result in ``fmt``; ``name`` adds a ``file`` field to json (stdout's JSON Lines)."""
    if fmt == "json":
        obj = result.to_json()
        if name is None:
            return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
        return json.dumps({"file": name, **obj}, ensure_ascii=False) + "\n"
    if fmt == "srt":
        return srt(result.segments)
    if fmt == "vtt":
        return vtt(result.segments)
    return result.best_text + "\n"


def _outputs(p: argparse.ArgumentParser, files: Sequence[str], directory: Path, fmt: str) -> list[Path]:
    paths = [directory / f"{Path(f).stem}.{EXTENSIONS[fmt]}" for f in files]
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            # Refused before any request, so no result is written and then overwritten.
            p.error(f"two inputs would both write {path}; run them separately")
        seen.add(path)
    return paths


def _run_files(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else os.environ.get("ASR_API_KEY") or None
    outputs = _outputs(p, args.files, args.output_dir, args.format) if args.output_dir else None
    if args.output_dir:
        try:
            args.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = AsrClientError("output_error", f"{args.output_dir}: {exc.strerror or exc}")
            print(f"asr-client: {error}", file=sys.stderr)
            return error.exit_code
    ident = machine_id()  # once: on Windows and macOS it runs tools
    progress = Progress(len(args.files), args.progress)
    status = 0
    for index, name in enumerate(args.files):
        progress.start(name)
        try:
            result = transcribe(name, server=args.server, key=key, language=args.language, task=args.task,
                                word_timestamps=args.word_timestamps, prompt=args.prompt,
                                postprocess=args.postprocess, machine_id=ident, timeout_s=args.timeout)
            if outputs is not None:
                try:
                    outputs[index].write_text(render(result, args.format, None), encoding="utf-8")
                except OSError as exc:
                    raise AsrClientError("output_error", f"{outputs[index]}: {exc.strerror or exc}") from None
            else:
                header = f"==> {name} <==\n" if len(args.files) > 1 and args.format != "json" else ""
                progress.write(header + render(result, args.format, name if args.format == "json" else None),
                               sys.stdout)
        except AsrClientError as exc:
            progress.write(f"asr-client: {name}: {exc}\n")
            status = status or exc.exit_code
        progress.finish(name)
    return status


def _run_live(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="asr-client live",
        description="Dictate live: stream a file at real-time pace (or the microphone) to the server's "
                    "/v1/realtime and print the text as each part of it becomes final.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", metavar="FILE", help="an audio file, streamed as if spoken")
    source.add_argument("--mic", action="store_true", help="the default microphone until Ctrl-C "
                        "(needs asr-client[mic])")
    p.add_argument("--server", default=os.environ.get("ASR_LIVE_SERVER", DEFAULT_LIVE_SERVER),
                   help="ws://host:port of the server's HTTP port, or wss://host behind its proxy "
                        "(env ASR_LIVE_SERVER; default %(default)s)")
    p.add_argument("--key", default=None, help="API key (default: env ASR_API_KEY)")
    p.add_argument("--language", default=None, help="ISO 639-1 code such as bg or en (default: detect)")
    p.add_argument("--prompt", default=None, help="names and terms the speaker uses")
    p.add_argument("--pace", type=float, default=1.0, help="times real time for a file (default 1)")
    args = p.parse_args(argv)
    key = args.key if args.key is not None else os.environ.get("ASR_API_KEY") or None
    stop = threading.Event()
    chunks = microphone_chunks(stop) if args.mic else file_chunks(args.file, args.pace)

    def shown(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        live(chunks, server=args.server, key=key, language=args.language, prompt=args.prompt, on_text=shown,
             on_item=lambda item: shown("\n"), machine_id=machine_id())
    except AsrClientError as exc:
        print(f"asr-client: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        stop.set()
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Transcripts are any script: a pipe on Windows would otherwise be cp1252 and fail on Cyrillic.
        sys.stdout.reconfigure(encoding="utf-8")
    if argv[:1] == ["live"]:
        return _run_live(argv[1:])
    if argv[:1] == ["machine-id"]:
        argparse.ArgumentParser(prog="asr-client machine-id",
                                description="Print this machine's id (the spec's SHA256 fingerprint)."
                                ).parse_args(argv[1:])
        print(machine_id())
        return 0
    p = parser()
    try:
        return _run_files(p, p.parse_args(argv))
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT, without a traceback


if __name__ == "__main__":
    sys.exit(main())

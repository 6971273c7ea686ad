"""`lucid-sessions`: run the node (`up`, `serve`) and talk to its gateway (upload, ls, ...).

Client commands print `error: <code>: <detail>` and exit 1 on failure, never a
traceback; configuration errors exit 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sessions.client._client import (
    CHECKSUM,
    MIB,
    ClientError,
    LucidClient,
    Progress,
    ResumeStore,
    UploadPlan,
    default_state_file,
    download_replay,
    parse_pin,
    tls_verify,
    upload_file,
)
from sessions.client.verify import (
    OfflineReport,
    VerificationError,
    check_inclusion,
    compromise_problem,
    pinned_history,
    signing_key_of,
    verify_offline,
)
from sessions.common import checksums
from sessions.common.ids import is_session_id
from sessions.common.roles import Role
from sessions.common.secrets import ConfigError
from sessions.common.serve import tune_allocator
from sessions.common.states import SessionState

if TYPE_CHECKING:  # the launcher imports every service's settings: only `up` needs them
    from sessions.client.launcher import AnySettings, ServiceName
    from sessions.contract.models import Session  # a replay loads no model (nor pydantic)

DEFAULT_URL = "http://127.0.0.1:8087"
STOP_GRACE = 10.0
HEALTH_TIMEOUT = 60.0


def _say(message: str) -> None:
    """Write one line to stderr after everything printed before it.

    stdout is block-buffered when it is not a terminal, so without the flush a
    message written later could land before earlier stdout lines, or inside one,
    where both streams go to one file (`2>&1`).  A progress bar's open line is
    ended first, so the message starts a line of its own.
    """
    Progress.end_line()
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)


def _data_dir() -> Path:
    return Path(os.environ.get("LUCID_DATA_DIR") or "lucid-data")


# -- serve: one service in the foreground, as a container runs it -------------------------
# Each through its own `python -m sessions.<service>` entry, imported only when served, so
# a service's process holds no other service's code.


def _serve_api() -> int:
    from sessions.api.__main__ import main as serve_api

    return serve_api()


def _serve_processor() -> int:
    from sessions.processor.__main__ import main as serve_processor

    return serve_processor()


def _serve_storage() -> int:
    from sessions.storage.__main__ import main as serve_storage

    return serve_storage()


SERVE: dict[str, Callable[[], int]] = {"api": _serve_api, "processor": _serve_processor,
                                       "storage": _serve_storage}


def cmd_serve(args: argparse.Namespace) -> int:
    return SERVE[args.service]()


# -- up: all three services locally, one process each --------------------------------------


def _local_setup(data_dir: Path) -> dict[ServiceName, AnySettings]:
    """Return each service's settings after generating the local secrets once."""
    from sessions.client.launcher import SETTINGS
    from sessions.processor.keys import ensure_local_keys

    os.environ["LUCID_DATA_DIR"] = str(data_dir)
    api, processor = SETTINGS["api"](), SETTINGS["processor"]()
    configs: dict[ServiceName, AnySettings] = {
        "storage": SETTINGS["storage"](), "processor": processor, "api": api}
    api.service_token()
    api.admin_token()
    for message in ensure_local_keys(processor):
        _say(message)
    return configs


class StopFlag:
    """A stop request that a signal handler may set.

    Not a threading.Event: its set() takes a lock that the interrupted main thread
    may be holding inside Event.wait(), and the handler would then deadlock (seen:
    `up` hung on SIGTERM).  Setting a plain attribute is safe; waiting polls it.
    """

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, timeout: float) -> bool:
        """Return whether a stop was requested, polling for up to timeout seconds."""
        deadline = time.monotonic() + timeout
        while not self.requested and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.requested


def _print_banner(urls: Mapping[ServiceName, str], data_dir: Path) -> None:
    token = data_dir / "secrets" / "admin.token"
    print(f"Lucid Sessions is running; data and secrets in {data_dir}\n"
          f"  api        {urls['api']}   (OpenAPI: {urls['api']}/docs)\n"
          f"  processor  {urls['processor']}   (internal)\n"
          f"  storage    {urls['storage']}   (internal)\n"
          f"Try:\n"
          f"  TOKEN=$(cat {token})\n"
          f"  curl -H \"Authorization: Bearer $TOKEN\" {urls['api']}/v1/sessions\n"
          f"Press Ctrl-C to stop.", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from sessions.client import launcher

    data_dir = (args.data_dir or _data_dir()).resolve()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # health polls are not news
    try:
        configs = _local_setup(data_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _say(f"secrets: {data_dir / 'secrets'} (service.token, admin.token, master.key, "
         "signing.key; mode 0600)")
    # The user's LUCID_* settings reach the services; the children inherit our output, and
    # run in sessions of their own: a Ctrl-C reaches only us, and we stop them in order.
    node = launcher.Node(data_dir, {name: configs[name].port for name in launcher.SERVICES},
                         host=configs["api"].host, inherit_lucid=True, own_session=True,
                         say=_say)
    stop = StopFlag()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        try:
            node.start_all(timeout=HEALTH_TIMEOUT, ready=False, abort=stop.is_set)
        except launcher.StartAborted:
            return 0
        except launcher.ServiceFailed as exc:
            _say(f"error: {exc}")
            return 1
        _print_banner(node.urls, data_dir)
        while not stop.wait(0.5):
            dead = node.exited()
            if dead is not None:
                _say(f"error: {dead[0]} exited with status {dead[1]}; stopping")
                return 1
        _say("stopping ...")
        return 0
    finally:
        node.stop(grace=STOP_GRACE)


# -- client commands ------------------------------------------------------------------------


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ClientError("token_unreadable", f"cannot read token file {path} "
                          f"({exc.strerror or type(exc).__name__})") from None


def _token(args: argparse.Namespace) -> str | None:
    """Return the bearer token: --token-file, $LUCID_TOKEN_FILE, $LUCID_TOKEN, local default."""
    if args.token_file:
        return _read_token(Path(args.token_file))
    if os.environ.get("LUCID_TOKEN_FILE"):
        return _read_token(Path(os.environ["LUCID_TOKEN_FILE"]))
    if os.environ.get("LUCID_TOKEN"):
        return os.environ["LUCID_TOKEN"].strip()
    default = _data_dir() / "secrets" / "admin.token"
    return _read_token(default) if default.is_file() else None


def _client(args: argparse.Namespace) -> LucidClient:
    return LucidClient(args.url, _token(args), verify=tls_verify(args.cacert, args.pin_sha256))


def _pin(value: str) -> str:
    try:
        parse_pin(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _progress(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def _pinned(args: argparse.Namespace) -> list[str]:
    """Return the verifier keys pinned with --key (repeatable) or --key-file (one a line)."""
    keys = list(getattr(args, "key", None) or [])
    if getattr(args, "key_file", None):
        keys += _read_token(Path(args.key_file)).splitlines()
    return [k.strip() for k in keys if k.strip()]


def _key_history(args: argparse.Namespace, client: LucidClient) -> list[dict[str, Any]]:
    """Return the keys to trust: the pinned ones, else the node's published key history."""
    if pinned := _pinned(args):
        return pinned_history(pinned)
    _say("warning: the verifier keys were fetched from the node itself (trust on first use); "
         "pass --key or --key-file with a pinned key for an independent check")
    node = client.node()
    return ([p.model_dump() for p in node.key_history]
            or [{"verifier_key": node.verifier_key}])


def _signer_of(args: argparse.Namespace, client: LucidClient, signed: bytes) -> Any:
    """Return the KeyPeriod of the trusted key that signed `signed` (VerificationError)."""
    return signing_key_of(signed, _key_history(args, client))


def cmd_upload(args: argparse.Namespace) -> int:
    tune_allocator()  # it moves the file in MiB-sized pieces, as the services do
    path = Path(args.file)
    if not path.is_file():
        raise ClientError("file_not_found", f"{path} is not a regular file")
    plan = UploadPlan(labels=dict(args.label or []), retention_days=args.retention_days,
                      request_bytes=args.request_mib * MIB, finalize=args.finalize,
                      session_id=args.session, checksum=args.checksum)
    with _client(args) as client:
        session_id = upload_file(client, path, plan, store=ResumeStore(default_state_file()),
                                 progress_enabled=_progress(args), say=_say)
    print(session_id)
    return 0


def _print_sessions(items: list[Session], *, header: bool) -> None:
    if header:
        print(f"{'ID':<26}  {'STATE':<10}  {'BYTES':>14}  {'CHUNKS':>7}  {'CREATED':<19}  LABELS")
    for s in items:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.id:<26}  {s.state.value:<10}  {s.offset:>14,}  {s.chunk_count:>7}  "
              f"{s.created_at[:19]:<19}  {labels}")


def cmd_ls(args: argparse.Namespace) -> int:
    labels = [f"{k}:{v}" for k, v in args.label or []]
    cursor: str | None = None
    with _client(args) as client:
        while True:
            page = client.list_sessions(state=args.state, labels=labels, limit=args.limit,
                                        cursor=cursor)
            _print_sessions(page.items, header=cursor is None)
            cursor = page.next_cursor
            if not cursor or not args.all:
                break
    if cursor:
        _say("(more sessions: use --all)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.get_session(args.id).model_dump(mode="json"), indent=2,
                         sort_keys=True))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_session(args.id)
    print(f"deleted {args.id}")
    return 0


_DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    """Return the seconds of `30d`, `12h`, `90m` or `3600s`."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("a duration is a number and a unit: 30d, 12h, 90m, 60s")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def cmd_token_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        made = client.create_token(args.name, args.role, args.expires_in)
    _say(f"token {made.id} ({made.role.value}, {made.name}), expires "
         f"{made.expires_at or 'never'}; it is shown only now:")
    print(made.token)
    return 0


def cmd_token_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = client.list_tokens().items
    print(f"{'ID':<16}  {'ROLE':<8}  {'NAME':<20}  {'CREATED':<19}  {'EXPIRES':<19}  REVOKED")
    for t in items:
        print(f"{t.id:<16}  {t.role.value:<8}  {t.name[:20]:<20}  {t.created_at[:19]:<19}  "
              f"{(t.expires_at or '-')[:19]:<19}  {(t.revoked_at or '-')[:19]}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.revoke_token(args.id)
    print(f"revoked {args.id}")
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.rotate_keys()
    print(json.dumps(report.model_dump(), indent=2))
    if report.unknown_key_ids:
        _say("error: some session keys are wrapped under a master key the processor does not "
             "hold; add it to LUCID_PREVIOUS_MASTER_KEY_FILES and run again")
        return 1
    if report.unreadable_session_ids:
        _say("error: some session keys are malformed or do not open under their master key "
             "(damaged metadata); they were left as they are: run verify on those sessions")
        return 1
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    with _client(args) as client:
        proof = client.inclusion_proof(args.id, args.index, args.size).model_dump()
        print(json.dumps(proof, indent=2))
        checkpoint = client.checkpoint(args.id, int(proof["size"]))
        period = _signer_of(args, client, checkpoint)
    cp = check_inclusion(proof, checkpoint=checkpoint, verifier_key=period.verifier_key,
                         session_id=args.id)
    if (problem := compromise_problem(period)) is not None:
        raise VerificationError(problem)
    _say(f"verified: chunk {args.index} is in the signed tree of {cp.size} chunks "
         f"(root {cp.root_hash.hex()})")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    tune_allocator()
    byte_range = f"bytes={args.range}" if args.range else None
    with _client(args) as client:
        written = download_replay(client, args.id, Path(args.output), byte_range=byte_range,
                                  progress_enabled=_progress(args))
    _say(f"wrote {written:,} bytes to {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.bundle:
        return _verify_bundle(args)
    if args.id is None:
        raise ClientError("usage", "verify needs a session id, or --bundle FILE")
    fetched = 0
    progress = Progress(None, enabled=_progress(args))
    with _client(args) as client:
        manifest, checkpoint = client.manifest(args.id), client.checkpoint(args.id)
        period = _signer_of(args, client, checkpoint)

        def fetch(index: int) -> bytes | None:
            nonlocal fetched
            sealed = client.sealed_chunk(args.id, index)
            fetched += len(sealed or b"")
            progress.update(fetched)
            return sealed

        try:
            report = verify_offline(args.id, verifier_key=period.verifier_key,
                                    manifest=manifest, checkpoint=checkpoint,
                                    fetch_chunk=fetch, sample=args.sample)
        finally:
            progress.finish()
    if (problem := compromise_problem(period)) is not None:
        report.problems.append(problem)
    return _print_report(report)


def _print_report(report: OfflineReport) -> int:
    for problem in report.problems:
        print(f"FAIL: {problem}")
    for index, reason in report.bad_chunks:
        print(f"FAIL: chunk {index}: {reason}")
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: session {report.session_id}: {report.checked} of {report.chunk_count} "
          f"chunks checked; signature {'ok' if report.signature_ok else 'BAD'}; "
          f"root {'ok' if report.root_ok else 'BAD'}")
    return 0 if report.ok else 1


def _verify_bundle(args: argparse.Namespace) -> int:
    """Verify a bundle with no node: every check of `verify`, on the bundle's bytes."""
    from sessions.client.evidence import verify_bundle  # not in the service images
    out = verify_bundle(Path(args.bundle), pinned=_pinned(args))
    if args.id is not None and args.id != out.index.session_id:
        out.problems.append(f"the bundle is of session {out.index.session_id}, not {args.id}")
    _say(f"bundle exported {out.index.exported_at}; signature checked with {out.key_note}")
    for problem in out.problems:
        print(f"FAIL: {problem}")
    code = _print_report(out.report)
    return 0 if out.ok and code == 0 else 1


def cmd_export(args: argparse.Namespace) -> int:
    from sessions.client.evidence import export_bundle
    progress = Progress(None, enabled=_progress(args))
    done = 0

    def count(n: int) -> None:
        nonlocal done
        done += n
        progress.update(done)

    with _client(args) as client:
        try:
            chunks = export_bundle(client, args.id, Path(args.output), on_chunk=count)
        finally:
            progress.finish()
    _say(f"wrote {args.output}: session {args.id}, {chunks} sealed chunks (no plaintext); "
         f"check it anywhere with: lucid-sessions verify --bundle {args.output}")
    return 0


def cmd_rotate_signing_key(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.rotate_signing_key(args.compromised_after).model_dump(),
                         indent=2))
    return 0


def cmd_audit_ls(args: argparse.Namespace) -> int:
    from sessions.client.evidence import audit_entries
    with _client(args) as client:
        print(f"{'SEQ':>6}  {'AT':<20}  {'ACTION':<18}  {'SESSION':<26}  {'ACTOR':<18}  "
              f"{'CLIENT':<15}  DETAIL")
        shown = 0
        for e in audit_entries(client, session_id=args.session):
            print(f"{e.seq:>6}  {e.at[:19]:<20}  {e.action:<18}  "
                  f"{e.session or '-':<26}  {e.actor:<18}  {e.client:<15}  "
                  f"{e.detail}")
            shown += 1
            if not args.all and shown >= args.limit:
                _say("(more entries may follow: use --all)")
                break
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from sessions.client.evidence import verify_audit
    with _client(args) as client:
        report = verify_audit(client, history=_key_history(args, client))
    for finding in report.findings:
        print(f"FAIL: {finding}")
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: audit log: {report.size} entries checked against the signed head")
    return 0 if report.ok else 1


# -- argument parsing -----------------------------------------------------------------------


def _session_id(value: str) -> str:
    if not is_session_id(value):
        raise argparse.ArgumentTypeError("not a session id (26 characters of Crockford base32)")
    return value


def _pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("labels look like key=value")
    return key, val


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return int(value)


def _percent(value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not 0 < p <= 100:
        raise argparse.ArgumentTypeError("must be a percentage, 0 < P <= 100")
    return p


def _byte_range(value: str) -> str:
    if not re.fullmatch(r"[0-9]+-[0-9]*|-[0-9]+", value):
        raise argparse.ArgumentTypeError("ranges look like A-B, A- or -N (bytes, inclusive)")
    return value


def _add_key_options(p: argparse.ArgumentParser) -> None:
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key", action="append", help="a signed-note verifier key of the node "
                      "(pinned; repeat for the keys of its key history)")
    keys.add_argument("--key-file", help="file holding verifier keys, one a line")


def _rfc3339(value: str) -> str:
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z",
                        value):
        raise argparse.ArgumentTypeError("times look like 2026-12-01T00:00:00Z (UTC)")
    return value


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lucid-sessions", description="Keep session "
                                     "recordings safe and provable.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default=os.environ.get("LUCID_URL", DEFAULT_URL),
                      help="gateway URL (env LUCID_URL; default %(default)s)")
    conn.add_argument("--token-file", help="bearer token file (env LUCID_TOKEN_FILE or "
                      "LUCID_TOKEN; default <LUCID_DATA_DIR>/secrets/admin.token)")
    conn.add_argument("--cacert", default=os.environ.get("LUCID_CACERT") or None,
                      metavar="FILE", help="trust only the CA certificate(s) in FILE for an "
                      "https gateway, e.g. secrets/tls-cert.pem (env LUCID_CACERT)")
    conn.add_argument("--pin-sha256", type=_pin, default=os.environ.get("LUCID_PIN_SHA256") or None,
                      metavar="PIN", help="trust the gateway's certificate by the SHA-256 of its "
                      "public key, sha256//BASE64 or hex (env LUCID_PIN_SHA256)")

    def add(name: str, func: Command, help_: str, *parents: argparse.ArgumentParser) -> Any:
        p = sub.add_parser(name, help=help_, description=help_, parents=list(parents))
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "run storage, processor and api locally (Ctrl-C stops them)")
    p.add_argument("--data-dir", type=Path, help="default $LUCID_DATA_DIR or ./lucid-data")
    p = add("serve", cmd_serve, "run one service in the foreground, as a container does")
    p.add_argument("service", choices=tuple(SERVE))
    p = add("upload", cmd_upload, "upload a file into a session (resumable)", conn)
    p.add_argument("file")
    p.add_argument("--label", action="append", type=_pair, metavar="KEY=VALUE")
    p.add_argument("--retention-days", type=_positive)
    p.add_argument("--session", type=_session_id, help="append to this session")
    p.add_argument("--request-mib", type=_positive, default=256,
                   help="MiB per PATCH request, rounded to the chunk size (default 256)")
    p.add_argument("--finalize", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--checksum", choices=checksums.ALGORITHMS, default=CHECKSUM,
                   help=f"Upload-Checksum of every request (default {CHECKSUM}: catches damage "
                   "on the way; TLS and the signed Merkle root are what resist tampering)")
    p.add_argument("--progress", action="store_true", help="show progress even without a TTY")
    p = add("ls", cmd_ls, "list sessions, newest first", conn)
    p.add_argument("--state", choices=[s.value for s in SessionState])
    p.add_argument("--label", action="append", type=_pair, metavar="KEY=VALUE")
    p.add_argument("--limit", type=_positive, default=50)
    p.add_argument("--all", action="store_true", help="follow cursors to the last page")
    p = add("show", cmd_show, "show one session as JSON", conn)
    p.add_argument("id", type=_session_id)
    p = add("rm", cmd_rm, "delete a session (crypto-erase)", conn)
    p.add_argument("id", type=_session_id)
    add("rotate-keys", cmd_rotate_keys, "rewrap every session key under the current master key",
        conn)
    tokens = add("token", lambda _: 2, "API tokens with roles (admin): create, ls, revoke")
    tsub = tokens.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    p = tsub.add_parser("create", parents=[conn], help="create a token; prints it once")
    p.set_defaults(func=cmd_token_create)
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--name", required=True, help="who or what holds it, e.g. ws-17")
    p.add_argument("--expires-in", type=_duration, help="e.g. 30d, 12h (default: never)")
    p = tsub.add_parser("ls", parents=[conn], help="list tokens (never their secrets)")
    p.set_defaults(func=cmd_token_ls)
    p = tsub.add_parser("revoke", parents=[conn], help="revoke a token by id")
    p.set_defaults(func=cmd_token_revoke)
    p.add_argument("id", help="token id (16 hex digits)")
    p = add("proof", cmd_proof, "print and verify a chunk's inclusion proof", conn)
    p.add_argument("id", type=_session_id)
    p.add_argument("index", type=int)
    p.add_argument("--size", type=_positive, help="tree size (default: all chunks)")
    _add_key_options(p)
    p = add("replay", cmd_replay, "download the plaintext of a session", conn)
    p.add_argument("id", type=_session_id)
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--range", type=_byte_range, help="bytes A-B (inclusive)")
    p.add_argument("--progress", action="store_true")
    p = add("verify", cmd_verify, "verify a finalized session offline (no keys)", conn)
    p.add_argument("id", type=_session_id, nargs="?")
    p.add_argument("--bundle", help="verify this evidence bundle, with no node reachable")
    _add_key_options(p)
    p.add_argument("--sample", type=_percent, default=100.0, help="percent of chunks to check")
    p.add_argument("--progress", action="store_true")
    p = add("export", cmd_export, "write a session's evidence bundle (sealed chunks, no "
            "plaintext)", conn)
    p.add_argument("id", type=_session_id)
    p.add_argument("-o", "--output", required=True, help="bundle file to write (a tar)")
    p.add_argument("--progress", action="store_true")
    p = add("rotate-signing-key", cmd_rotate_signing_key, "retire the node's signing key for "
            "a fresh one (old checkpoints keep verifying)", conn)
    p.add_argument("--compromised-after", type=_rfc3339, metavar="TIME",
                   help="mark the retiring key compromised after TIME (UTC)")
    audit = add("audit", lambda _: 2, "read and verify the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = audit_sub.add_parser("ls", help="list entries, oldest first", parents=[conn])
    p.set_defaults(func=cmd_audit_ls)
    p.add_argument("--session", type=_session_id, help="only entries of this session")
    p.add_argument("--limit", type=_positive, default=100)
    p.add_argument("--all", action="store_true")
    p = audit_sub.add_parser("verify", help="check every entry against the signed head",
                             parents=[conn])
    p.set_defaults(func=cmd_audit_verify)
    _add_key_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # What the imports built lives as long as the process: left out of every collection,
    # the one at exit included, it costs no scan (that scan took 30-40 ms of each command).
    gc.freeze()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ClientError as exc:
        _say(f"error: {exc.code}: {exc.detail}")
        if exc.code == "unauthorized":
            _say("hint: pass --token-file (the local token is <data dir>/secrets/admin.token)")
        if exc.code == "forbidden":
            _say("hint: this token's role may not do that (README: Access control)")
        return 1
    except VerificationError as exc:
        _say(f"error: verification_failed: {exc}")
        return 1
    except ConfigError as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"error: {type(exc).__name__}: {exc.strerror or exc}{where}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

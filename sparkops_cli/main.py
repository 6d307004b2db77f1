"""`sparkops`: list projects and workflows, start runs, follow them live, decide approvals,
cancel and retry. Exit codes: 0 done (a followed run succeeded), 1 a followed run ended
otherwise (failed, cancelled, timed out), 2 bad usage, 3 the API answered an error (its JSON
`detail` is printed), 4 the server could not be reached."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from sparkops_cli.client import APIError, Client, CLIError, base_url, load_config, save_config

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_API, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
STEP_DONE = {"succeeded", "failed", "skipped", "cancelled"}
STEP_ACTIVE = {"queued", "running", "waiting_approval"}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = load_config()
    api_key = args.api_key or os.environ.get("SPARKOPS_API_KEY") or None
    client = Client(base_url(args.url, config), api_key=api_key, config=config)
    try:
        return int(args.command(client, args) or EXIT_OK)
    except CLIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="sparkops",
        description="Spark-Ops from the command line, on the REST API.",
        epilog="Exit codes: 0 ok, 1 the run did not succeed, 2 usage, 3 API error, 4 unreachable.",
    )
    root.add_argument("--url", help="server URL (default: $SPARKOPS_URL, the login's, :8000)")
    root.add_argument("--api-key", help="an API key (default: $SPARKOPS_API_KEY, else the login)")
    root.add_argument("--json", action="store_true", help="print the API's JSON as is")
    commands = root.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=func)
        return sub

    login = command("login", cmd_login, "log in with email and password; keeps a JWT pair")
    login.add_argument("--email", required=True)
    login.add_argument("--password", help="default: $SPARKOPS_PASSWORD, else asked")
    command("logout", cmd_logout, "end the stored login")
    command("projects", cmd_projects, "list your projects")
    workflows = command("workflows", cmd_workflows, "list workflows")
    workflows.add_argument("--project", help="a project id")
    workflows.add_argument("--search")

    run = command("run", cmd_run, "start a run of a workflow (id or slug); prints the run id")
    run.add_argument("workflow", help="workflow id or slug")
    run.add_argument("-i", "--input", default="{}", help="JSON object, @FILE, or - for stdin")
    run.add_argument("--project", help="the project, when a slug exists in several")
    run.add_argument("--idempotency-key", help="the same key and input return the same run")
    run.add_argument("-f", "--follow", action="store_true", help="follow it until it ends")
    run.add_argument("--events", action="store_true", help="while following, print each event")

    show = command("show", cmd_show, "a run: status, output, cost, steps")
    show.add_argument("run")
    follow = command("follow", cmd_follow, "follow a run's events live until it ends")
    follow.add_argument("run")
    follow.add_argument("--events", action="store_true", help="print each event")
    for verb, done in (("approve", "approved"), ("reject", "rejected")):
        decide = command(verb, cmd_decide, f"{verb} a step waiting for approval")
        decide.add_argument("run")
        decide.add_argument("step", help="the approval node's id")
        decide.add_argument("-m", "--comment", default="")
        decide.set_defaults(verb=verb, done=done)
    cancel = command("cancel", cmd_cancel, "cancel a run")
    cancel.add_argument("run")
    retry = command("retry", cmd_retry, "start a new run with the same input; prints its id")
    retry.add_argument("run")
    retry.add_argument("--from-failure", action="store_true", help="reuse succeeded steps")
    retry.add_argument("-f", "--follow", action="store_true")
    retry.add_argument("--events", action="store_true")
    return root


# --- commands ------------------------------------------------------------------------------------


def cmd_login(client: Client, args: argparse.Namespace) -> int:
    password = args.password or os.environ.get("SPARKOPS_PASSWORD")
    if not password:
        password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline()
    tokens = client.request(
        "POST", "/auth/login", json={"email": args.email, "password": password.rstrip("\n")}
    )
    path = save_config(
        {
            "url": client.url,
            "email": args.email,
            "access": tokens["access"],
            "refresh": tokens["refresh"],
        }
    )
    print(f"Logged in to {client.url} as {args.email} (saved in {path})")
    return EXIT_OK


def cmd_logout(client: Client, args: argparse.Namespace) -> int:
    if client.config.get("refresh"):
        # Expired already: forgetting it locally is what is left to do.
        with contextlib.suppress(APIError):
            client.post("/auth/logout", {"refresh": client.config["refresh"]})
    save_config({"url": client.url})
    print("Logged out")
    return EXIT_OK


def cmd_projects(client: Client, args: argparse.Namespace) -> int:
    rows = list(client.pages("/projects/", page_size=100))
    if args.json:
        return print_json(rows)
    table(rows, [("id", "ID"), ("slug", "SLUG"), ("name", "NAME"), ("role", "ROLE")])
    return EXIT_OK


def cmd_workflows(client: Client, args: argparse.Namespace) -> int:
    rows = list(
        client.pages("/workflows/", project=args.project, search=args.search, page_size=100)
    )
    if args.json:
        return print_json(rows)
    table(
        rows,
        [
            ("id", "ID"),
            ("slug", "SLUG"),
            ("name", "NAME"),
            ("version", "VERSION"),
            ("project", "PROJECT"),
        ],
    )
    return EXIT_OK


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    run_input = read_input(args.input)
    workflow = resolve_workflow(client, args.workflow, args.project)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    run = client.post(f"/workflows/{workflow}/run", {"input": run_input}, headers=headers)
    return started(client, args, run)


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    run = client.post(f"/runs/{args.run}/retry", {"from_failure": args.from_failure})
    return started(client, args, run)


def started(client: Client, args: argparse.Namespace, run: dict[str, Any]) -> int:
    if args.follow:
        print(f"run {run['id']} started", file=sys.stderr)
        return follow(client, run["id"], events=args.events, as_json=args.json)
    if args.json:
        return print_json(run)
    print(run["id"])
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    run = client.get(f"/runs/{args.run}/")
    if args.json:
        return print_json(run)
    print(f"run {run['id']}: {run['status']}  {run['workflow_name']} v{run['version']}")
    print(f"cost ${money(run['cost'])}  tokens {run['input_tokens']}+{run['output_tokens']}")
    for step in run["steps"]:
        print(f"  {step['node_id']:<24} {step['status']}")
    if run["error"]:
        print(f"error: {json.dumps(run['error'])}")
    if run["output"] is not None:
        print(json.dumps(run["output"], indent=2))
    return EXIT_OK


def cmd_follow(client: Client, args: argparse.Namespace) -> int:
    return follow(client, args.run, events=args.events, as_json=args.json)


def cmd_decide(client: Client, args: argparse.Namespace) -> int:
    step = client.post(f"/runs/{args.run}/steps/{args.step}/{args.verb}", {"comment": args.comment})
    if args.json:
        return print_json(step)
    print(f"{args.step}: {args.done}")
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    run = client.post(f"/runs/{args.run}/cancel")
    if args.json:
        return print_json(run)
    print(f"run {run['id']}: {run['status']}")
    return EXIT_OK


# --- following a run -----------------------------------------------------------------------------


class Progress:
    """Steps done of total, the steps in flight, the cost so far: one line that rewrites itself
    on a terminal, a line per change otherwise (logs, pipes, tests)."""

    def __init__(self, steps: list[str], out: TextIO) -> None:
        self.status = "pending"
        self.steps = dict.fromkeys(steps, "pending")
        self.cost = Decimal(0)
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def apply(self, event: dict[str, Any]) -> list[str]:
        """Fold one event in; returns notices worth a line of their own."""
        kind, node, payload = event["type"], event.get("node_id"), event.get("payload") or {}
        if kind == "run.status":
            self.status = payload.get("status", self.status)
        elif kind == "step.status" and node:
            self.steps[node] = payload.get("status", self.steps.get(node, "pending"))
        elif kind == "llm.call":
            self.cost += Decimal(str(payload.get("cost") or 0))
        elif kind == "approval.requested":
            message = payload.get("message") or ""
            return [f"waiting for approval: step {node} {message}".rstrip()]
        elif kind == "approval.decided":
            verdict = "approved" if payload.get("approved") else "rejected"
            return [f"step {node} {verdict}"]
        return []

    def line(self) -> str:
        done = sum(status in STEP_DONE for status in self.steps.values())
        active = [node for node, status in self.steps.items() if status in STEP_ACTIVE]
        current = ", ".join(active) if active else "-"
        return (
            f"{self.status:<16} {done}/{len(self.steps)} steps  current: {current}  "
            f"cost ${money(self.cost)}"
        )

    def show(self) -> None:
        text = self.line()
        if text == self.last:
            return
        self.last = text
        if self.tty:
            self.out.write("\r\033[K" + text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.last = ""
        self.out.flush()


def follow(client: Client, run_id: str, *, events: bool = False, as_json: bool = False) -> int:
    """Replays the run's events from the first (so the counts are whole), then follows live;
    prints the output (stdout) and the outcome (exit code) once the run has ended."""
    run = client.get(f"/runs/{run_id}/")
    progress = Progress([step["node_id"] for step in run["steps"]], sys.stderr)

    def resumed(after: int) -> None:
        if events:
            progress.note(f"(stream resumed after #{after})")

    for event in client.events(run_id, on_resume=resumed):
        notices = progress.apply(event)
        if events:
            progress.note(event_line(event))
        for notice in notices:
            progress.note(notice)
        progress.show()
    if progress.tty:
        sys.stderr.write("\n")
    run = client.get(f"/runs/{run_id}/")
    if as_json:
        print_json(run)
    elif run["output"] is not None:
        print(json.dumps(run["output"], indent=2))
    print(f"run {run['id']} {run['status']} (cost ${money(run['cost'])})", file=sys.stderr)
    if run["status"] != "succeeded":
        if run["error"]:
            print(f"error: {json.dumps(run['error'])}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


def event_line(event: dict[str, Any]) -> str:
    payload = event.get("payload") or {}
    status = payload.get("status", "")
    node = event.get("node_id") or ""
    return f"#{event['seq']} {event['type']} {node} {status}".rstrip()


# --- helpers ------------------------------------------------------------------------------------


def read_input(value: str) -> Any:
    """A JSON object from the argument itself, `@FILE`, or `-` (stdin)."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise CLIError(f"cannot read {value[1:]}: {exc.strerror}", EXIT_USAGE) from exc
    else:
        text = value
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"the input is not JSON: {exc}", EXIT_USAGE) from exc
    if not isinstance(data, dict):
        raise CLIError("the input must be a JSON object", EXIT_USAGE)
    return data


def resolve_workflow(client: Client, ref: str, project: str | None) -> str:
    if ref.isdigit():
        return ref
    found = client.get("/workflows/", slug=ref, project=project)["results"]
    if not found:
        raise CLIError(f"no workflow with the slug {ref!r} that you can see", EXIT_API)
    if len(found) > 1:
        raise CLIError(f"{ref!r} is a workflow in several projects: pass --project", EXIT_USAGE)
    return str(found[0]["id"])


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    cells = [[title for _, title in columns]]
    cells += [["" if row.get(key) is None else str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(padded).rstrip())


def money(value: Any) -> str:
    """Dollars without the trailing zeros of the API's six decimals: 0.009, not 0.009000."""
    amount = Decimal(str(value or 0))
    return "0" if amount == 0 else format(amount.normalize(), "f")


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2))
    return EXIT_OK

"""``tiercel cache``: look at one cached value, and invalidate by key, tag, task or namespace.

``inspect`` never computes and never enqueues: it shows the key, the stored
entry's TTL left, size, codec, compute seconds and tags, who holds the key's
lease or in-flight marker, and whether each process's local levels hold it:
every listening process (each prefork child too) answers a request published
on the channel (:mod:`tiercel.core.cache.local_inspection`) within ``--wait``.
``invalidate`` removes one call's value at once; anything wider (a tag, every
value of a task, the whole namespace) says what it will do and asks first
(``--yes`` skips the question, ``--dry-run`` only says).
"""

from __future__ import annotations

import json
from typing import Any

import click

from tiercel.core.errors import SettingsError
from tiercel.workers.command_app import command_app

#: Exit status when the user answers no, or a dry run: nothing was invalidated.
EXIT_NOTHING_DONE = 1


def _setup(task: str | None) -> tuple[Any, Any]:
    """(runtime, the cached task named ``task`` or None), after the app is configured."""
    from tiercel.core.settings import resolve_settings

    resolve_settings()  # fail early, one line, when nothing is configured
    command_app()  # the configured app and its task modules
    from tiercel.tasks import runtime
    from tiercel.tasks.registry import find_cached_task

    found = find_cached_task(task) if task is not None else None
    return runtime.current(), found


def _arguments(args: tuple[str, ...]) -> list[Any]:
    try:
        return [json.loads(arg) for arg in args]
    except ValueError as exc:
        raise SettingsError(f"arguments must be JSON values: {exc}") from None


def describe_key(rt: Any, key: str) -> dict[str, Any]:
    """Where the value of ``key`` lives in the shared tier, and who computes it."""
    from tiercel.core.encoding.cache_key import CacheKey
    from tiercel.core.encoding.codecs import describe_frame

    parts = CacheKey.of(key)
    client = rt.tier.client
    entry = rt.tier.get_entry(key)
    stored: dict[str, Any] | None = None
    if entry is not None:
        ttl_ms = int(client.pttl(key))
        stored = {
            **describe_frame(entry.payload),
            "ttl_left": round(ttl_ms / 1000, 3) if ttl_ms >= 0 else None,
            "compute_seconds": round(entry.compute_seconds, 6),
            "stored_at": entry.stored_at,
            "tags": list(entry.tags),
        }
    holder = client.get(parts.lease)
    lease = None
    if holder is not None:
        token, _, owner = holder.decode().partition(":")
        lease = {
            "token": int(token),
            "owner": owner,
            "ttl_left": int(client.pttl(parts.lease)) / 1000,
        }
    return {
        "key": key,
        "namespace": parts.namespace,
        "task": parts.name,
        "version": parts.version,
        "redis": stored,
        "lease": lease,
        "inflight": rt.leases.inflight(key),
    }


@click.group("cache", short_help="inspect or invalidate cached values")
def group() -> None:
    """Look at one cached value, or invalidate values by call, tag, task or namespace."""


def describe_local_levels(rt: Any, key: str, window: float) -> dict[str, Any]:
    """What every other listening process's local levels hold of ``key``: the answers
    that came within ``window`` seconds, and how many processes were asked."""
    from tiercel.core.cache.local_inspection import collect_replies, request_inspection

    reply, receivers = request_inspection(rt.notifier.publish, key)
    answers = collect_replies(
        rt.tier.client,
        rt.namespace,
        reply,
        expected=receivers,
        window=window,
        chunk=max(0.01, rt.settings.redis_timeout / 2),
    )
    me = rt.identity()["id"]
    others = [answer for answer in answers if answer.get("id") != me]
    others.sort(key=lambda a: (str(a.get("node") or a.get("hostname")), int(a.get("pid", 0))))
    asked = receivers - (1 if len(others) < len(answers) else 0)
    return {"asked": asked, "answered": len(others), "processes": others}


@group.command(
    "inspect",
    short_help="where one call's value lives, and who computes it",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("task")
@click.argument("args", nargs=-1, metavar="[JSON_ARG]...")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option(
    "--wait",
    type=click.FloatRange(0, 10),
    default=0.5,
    show_default=True,
    metavar="SECONDS",
    help="how long to collect the processes' answers about their local levels",
)
def inspect(task: str, args: tuple[str, ...], as_json: bool, wait: float) -> int:
    """Show the key of TASK called with each JSON_ARG as a positional argument, the
    value stored in Redis (TTL left, size, codec, compute seconds, tags), the lease
    holder, the in-flight task, and which processes hold it in a local level (none
    of them counts a hit). Exit status 1 when nothing is stored in Redis."""
    rt, cached_task = _setup(task)
    key = rt.key(cached_task.tiercel_spec, cached_task.tiercel_args(_arguments(args)), {})
    found = describe_key(rt, key)
    found["local"] = describe_local_levels(rt, key, wait)
    if as_json:
        click.echo(json.dumps(found))
    else:
        click.echo(f"key        {found['key']}")
        stored = found["redis"]
        if stored is None:
            click.echo("redis      not stored")
        else:
            ttl = "no expiry" if stored["ttl_left"] is None else f"{stored['ttl_left']:g} s left"
            click.echo(
                f"redis      {stored['bytes']} bytes, {stored['codec']}"
                f"{' (compressed)' if stored['compressed'] else ''}, {ttl}, "
                f"computed in {stored['compute_seconds']:g} s"
            )
            click.echo(f"tags       {', '.join(stored['tags']) or '-'}")
        lease = found["lease"]
        click.echo(
            "lease      -"
            if lease is None
            else f"lease      held by {lease['owner']} ({lease['ttl_left']:g} s left)"
        )
        click.echo(f"in flight  {found['inflight'] or '-'}")
        _echo_local(found["local"])
    return 0 if found["redis"] is not None else EXIT_NOTHING_DONE


@group.command(
    "invalidate",
    short_help="forget one call's value, or every value of a tag, task or namespace",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("task", required=False)
@click.argument("args", nargs=-1, metavar="[JSON_ARG]...")
@click.option("--tag", metavar="TAG", help="every value carrying TAG")
@click.option("--task", "whole_task", metavar="TASK", help="every value of TASK (a version bump)")
@click.option("--namespace", is_flag=True, help="every value of this deployment's namespace")
@click.option("--dry-run", is_flag=True, help="say what would be invalidated, change nothing")
@click.option("--yes", "-y", is_flag=True, help="do not ask before a wide invalidation")
def invalidate(
    task: str | None,
    args: tuple[str, ...],
    tag: str | None,
    whole_task: str | None,
    namespace: bool,
    dry_run: bool,
    yes: bool,
) -> int:
    """Forget cached values in every tier and every process: TASK with JSON_ARGs (one
    call), or --tag TAG, --task TASK, or --namespace. A wide invalidation asks first."""
    chosen = [name for name, on in (("TASK", task), ("--tag", tag), ("--task", whole_task)) if on]
    if namespace:
        chosen.append("--namespace")
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of TASK [JSON_ARG]..., --tag, --task, --namespace"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if args and task is None:
        raise click.UsageError("JSON arguments go with TASK")
    rt, cached_task = _setup(task or whole_task)
    if task is not None:
        key = rt.key(cached_task.tiercel_spec, cached_task.tiercel_args(_arguments(args)), {})
        if dry_run:
            click.echo(f"would invalidate {key}")
            return EXIT_NOTHING_DONE
        rt.cache.invalidate(key)
        click.echo(f"invalidated {key}")
        return 0
    what = _describe_wide(rt, tag, whole_task)
    if dry_run:
        click.echo(f"would invalidate {what}")
        return EXIT_NOTHING_DONE
    if not yes and not click.confirm(f"Invalidate {what}?", default=False):
        click.echo("nothing invalidated")
        return EXIT_NOTHING_DONE
    if tag is not None:
        removed = rt.cache.invalidate_tag(tag)
        click.echo(f"invalidated {removed} values tagged {tag!r}")
    elif cached_task is not None:
        generation = cached_task.invalidate_all()
        click.echo(f"invalidated every value of {cached_task.name} (generation {generation})")
    else:
        generation = rt.invalidate_namespace()
        click.echo(f"invalidated namespace {rt.namespace!r} (generation {generation})")
    return 0


def _describe_wide(rt: Any, tag: str | None, whole_task: str | None) -> str:
    if tag is not None:
        from tiercel.core.tier.tag_index import tag_index_key

        members = int(rt.tier.client.scard(tag_index_key(rt.namespace, tag)))
        return f"{members} values tagged {tag!r} in namespace {rt.namespace!r}"
    if whole_task is not None:
        return f"every cached value of {whole_task} in namespace {rt.namespace!r}"
    return f"every cached value in namespace {rt.namespace!r}"


def _echo_local(local: dict[str, Any]) -> None:
    click.echo(f"local      {local['answered']} of {local['asked']} processes answered")
    for answer in local["processes"]:
        who = f"{answer.get('node') or answer.get('hostname')} pid {answer.get('pid')}"
        levels = ", ".join(f"{level['level']} {_held(level)}" for level in answer.get("levels", []))
        trusted = "" if answer.get("trusted", True) else " (levels not answering now)"
        click.echo(f"  {answer.get('role', '?'):<7} {who:<40} {levels}{trusted}")


def _held(level: dict[str, Any]) -> str:
    """One level's answer: ``holds it (TTL 12.3s, 1,204 B)`` or ``-``."""
    if not level.get("present"):
        return "-"
    ttl = level.get("ttl_left")
    size = level.get("size")
    parts = [f"TTL {ttl:g}s" if ttl is not None else "no TTL"]
    if size is not None:
        parts.append(f"{size:,} B")
    return f"holds it ({', '.join(parts)})"

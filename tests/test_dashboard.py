"""The monitoring configs: config/prometheus.yml and the Grafana dashboard.

The dashboard's queries are checked against a real node's page: a node with two workers
serves /metrics on a ``[[listen.http]]`` port; the test makes every event the dashboard
graphs happen (logins over STARTTLS, a message, a failed login, a bounce, a drop, a
stanza for an unserved domain, a crashed session, a killed worker), then every metric
name each panel queries must be on the page, with the labels the query filters and
groups by. Metric names are taken from the PromQL with a small tokenizer
(:func:`promql_selectors`), tested here on its own.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode, free_port
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_c2s_cluster import _worker_os_pid
from test_c2s_features import wait_reachable
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, xmpp_node_with

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "mongoose-dashboard.json"
PROMETHEUS_YML = ROOT / "config" / "prometheus.yml"

# Labels Prometheus adds at scrape time (target labels), not on the node's page.
TARGET_LABELS = {"instance", "job"}

# What the dashboard must graph, at least (the brief of each row).
REQUIRED = {
    "sm_session_count", "sm_session_logins_total", "sm_session_logouts_total",
    "xmpp_element_in_message_count_total", "xmpp_element_out_message_count_total",
    "xmpp_element_in_iq_count_total", "xmpp_element_in_presence_count_total",
    "c2s_message_processed_time_bucket",
    "tcp_data_in_byte_size_total", "tcp_data_out_byte_size_total",
    "tls_data_in_byte_size_total", "tls_data_out_byte_size_total",
    "auth_authorize_count_total", "auth_authorize_time_bucket", "c2s_auth_failed_count_total",
    "storage_query_count_total", "storage_query_time_bucket",
    "router_stanza_dropped_count_total", "router_no_route_found_count_total",
    "sm_message_bounced_count_total",
    "actor_restarted_count_total", "actor_crashed_count_total",
    "actor_mailbox_messages", "actor_mailbox_max", "system_info_mailbox_total",
    "system_info_process_count", "system_memory_total", "system_up_time_seconds",
    "cets_info_joined_nodes", "cets_info_available_nodes",
}


# -- PromQL ---------------------------------------------------------------------------------

AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
    "tanh", "time", "timestamp", "vector", "year",
}
# Keywords followed by a parenthesized list of label names.
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_TOKEN = re.compile(rf"""
    (?P<ws>\s+)
  | (?P<string>{_STRING})
  | (?P<selector>\{{(?:[^{{}}"'`]|{_STRING})*\}})
  | (?P<range>\[[^\]]*\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<variable>\$\{{?\w+\}}?)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>(),@])
""", re.VERBOSE)
_MATCHER = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*,?")


@dataclass
class Selector:
    """One vector selector of a query: the metric name and its label matchers
    (label -> (operator, value without quotes))."""

    name: str
    matchers: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Query:
    selectors: list[Selector]
    grouping: set[str]  # labels named in by/without/on/ignoring/group_* lists


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[at:at + 20]!r} in {expr!r}")
        at = match.end()
        if match.lastgroup != "ws":
            out.append((match.lastgroup or "", match.group()))
    return out


def _matchers(block: str) -> dict[str, tuple[str, str]]:
    inner, found, at = block[1:-1], {}, 0
    while inner[at:].strip():
        match = _MATCHER.match(inner, at)
        if match is None:
            raise ValueError(f"bad label matchers {block!r}")
        found[match.group(1)] = (match.group(2), match.group(3)[1:-1])
        at = match.end()
    return found


def promql_selectors(expr: str) -> Query:
    """The vector selectors and grouping labels of PromQL ``expr``.

    Strings, ranges and numbers are skipped; identifiers followed by ``(`` must be
    PromQL functions or aggregations (ValueError otherwise, so that a typo fails);
    ``by (...)`` and the like give grouping labels; a remaining identifier is a metric
    name, with the ``{...}`` that follows it. Parentheses must balance."""
    tokens = _tokens(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    depth, i = 0, 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "op" and text in "()":
            depth += 1 if text == "(" else -1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in {expr!r}")
        elif kind == "selector":  # {__name__="m", ...} without a name before it
            matchers = _matchers(text)
            name = matchers.pop("__name__", ("=", ""))
            if name[0] != "=" or not name[1]:
                raise ValueError(f"selector without a metric name in {expr!r}")
            selectors.append(Selector(name[1], matchers))
        elif kind == "ident":
            word = text.lower()
            if word in GROUPING and following == ("op", "("):
                close = next((j for j in range(i + 2, len(tokens))
                              if tokens[j] == ("op", ")")), None)
                if close is None:
                    raise ValueError(f"unclosed {text} (...) in {expr!r}")
                listed = tokens[i + 2:close]
                if any(k != "ident" and t != "," for k, t in listed):
                    raise ValueError(f"{text} (...) lists more than label names in {expr!r}")
                grouping.update(t for k, t in listed if k == "ident")
                i = close + 1
                continue
            if word in AGGREGATORS or word in FUNCTIONS:
                pass
            elif following == ("op", "("):
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            elif word not in KEYWORDS:
                matchers = {}
                if following[0] == "selector":
                    matchers = _matchers(following[1])
                    i += 1
                selectors.append(Selector(text, matchers))
        i += 1
    if depth != 0:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return Query(selectors, grouping)


def label_values_query(query: str) -> tuple[Query, str]:
    """Grafana's ``label_values(<selector>, <label>)``: the selector's query and label."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if match is None:
        raise ValueError(f"not a label_values(metric, label) query: {query!r}")
    return promql_selectors(match.group(1)), match.group(2)


@pytest.mark.timeout(10)
def test_the_extractor_finds_metric_names_labels_and_groupings():
    q = promql_selectors(
        'histogram_quantile(0.99, sum by (le, function) (rate(storage_query_time_bucket'
        '{instance=~"$instance", backend="sqlite"}[$__rate_interval])))')
    assert [s.name for s in q.selectors] == ["storage_query_time_bucket"]
    assert q.selectors[0].matchers == {"instance": ("=~", "$instance"),
                                       "backend": ("=", "sqlite")}
    assert q.grouping == {"le", "function"}

    q = promql_selectors('sum(rate(a_sum{x="1,}"}[5m])) / sum(rate(a_count[1h30m])) '
                         'by (host_type) > bool 1e3')
    assert [s.name for s in q.selectors] == ["a_sum", "a_count"]
    assert q.selectors[0].matchers == {"x": ("=", "1,}")}
    assert q.grouping == {"host_type"}

    q = promql_selectors("60 * max without(worker)(m offset 1h) and on(instance) "
                         "group_left(kind) other:recorded")
    assert [s.name for s in q.selectors] == ["m", "other:recorded"]
    assert q.grouping == {"worker", "instance", "kind"}

    q = promql_selectors('label_replace(up{job="x"}, "dst", "$1 rate(x)", "src", "(.*)")')
    assert [s.name for s in q.selectors] == ["up"]
    q = promql_selectors('{__name__="odd_metric", a!~"b"}')
    assert [(s.name, s.matchers) for s in q.selectors] == [("odd_metric", {"a": ("!~", "b")})]
    assert [s.name for s in promql_selectors("topk(10, sum by (a) (x))").selectors] == ["x"]

    for bad in ("rat(x[5m])", "sum(rate(x[5m])", "sum(x))", "x{a=b}", "sum by (a (x)"):
        with pytest.raises(ValueError):
            promql_selectors(bad)

    q, label = label_values_query('label_values(m_total{instance=~"$instance"}, host_type)')
    assert ([s.name for s in q.selectors], label) == (["m_total"], "host_type")


# -- the files ------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels(dashboard) if p["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in graph_panels(dashboard):
        for target in panel["targets"]:
            yield panel, target


def templating_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, Query, str]]:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            yield (variable["name"], *label_values_query(text))


@pytest.mark.timeout(10)
def test_the_dashboard_is_an_importable_grafana_dashboard():
    dashboard = load_dashboard()
    assert dashboard["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None  # import assigns one
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    for name, query, label in templating_queries(dashboard):
        assert query.selectors and label == name, (name, label)
        assert variables[name]["datasource"]["uid"] == "${datasource}"

    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert any(p["type"] == "row" for p in dashboard["panels"])
    occupied: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, (panel["title"], occupied.get((x, y)))
                occupied[x, y] = panel["title"]

    graphs = graph_panels(dashboard)
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, \
            panel["title"]
        assert panel["targets"], f"{panel['title']} has no target"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            query = promql_selectors(target["expr"])
            assert query.selectors, target["expr"]
            for selector in query.selectors:
                # Every series is filtered by the node picker.
                assert selector.matchers.get("instance") == ("=~", "$instance"), target["expr"]
            if "histogram_quantile" in target["expr"]:
                assert all(s.name.endswith("_bucket") for s in query.selectors)
                assert "le" in query.grouping, target["expr"]
            # The legend names only labels the query keeps.
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= query.grouping, (panel["title"], legend, query.grouping)

    used = {s.name for _, t in queries(dashboard) for s in promql_selectors(t["expr"]).selectors}
    assert not REQUIRED - used, f"not graphed: {sorted(REQUIRED - used)}"


def yaml_lines(text: str) -> list[tuple[int, str]]:
    """(indent, content) of the lines of a simple YAML file, comments and blanks left out."""
    out = []
    for line in text.splitlines():
        assert "\t" not in line, f"a tab in {line!r}"
        content = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if content.strip():
            out.append((len(content) - len(content.lstrip()), content.strip()))
    return out


@pytest.mark.timeout(10)
def test_the_prometheus_config_scrapes_the_node_page():
    text = PROMETHEUS_YML.read_text(encoding="utf-8")
    lines = yaml_lines(text)
    assert all(indent % 2 == 0 for indent, _ in lines)
    top = [content for indent, content in lines if indent == 0]
    assert "scrape_configs:" in top and "global:" in top
    start = next(i for i, (_, c) in enumerate(lines) if c == "scrape_configs:")
    job = lines[start + 1:]
    assert job and job[0][1] == "- job_name: mongoose", job[:1]
    keys = dict(c.split(": ", 1) for _, c in job if ": " in c and not c.startswith("- "))
    assert keys["metrics_path"] == "/metrics"
    assert keys["scrape_interval"] == "15s"
    assert re.fullmatch(r"\d+s", keys["scrape_timeout"])
    targets_at = next(i for i, (_, c) in enumerate(job) if c == "- targets:")
    indent = job[targets_at][0]
    listed = [c[2:] for i, c in job[targets_at + 1:] if i > indent and c.startswith("- ")]
    assert "localhost:9091" in listed

    try:
        import yaml
    except ImportError:
        return  # PyYAML is not a dependency; the line checks above stand
    config = yaml.safe_load(text)
    (scrape,) = config["scrape_configs"]
    assert scrape["job_name"] == "mongoose" and scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"][0]["targets"] == ["localhost:9091"]


# -- against a real node --------------------------------------------------------------------

@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(port: int) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def by_name(samples: list[Sample]) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its samples."""
    out: dict[str, list[dict[str, str]]] = {}
    for sample in samples:
        out.setdefault(sample.name, []).append(sample.labels)
    return out


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that have these labels."""
    return sum(s.value for s in samples
               if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory,
         test_node: TestNode) -> Iterator[MongooseNode]:
    http_port = free_port()
    instrumentation = (
        "[instrumentation]\nprobe_interval = 1\n[instrumentation.prometheus]\n"
        f'[[listen.http]]\nport = {http_port}\nip_address = "127.0.0.1"\n'
        '[[listen.http.handlers.mongoose_prometheus_handler]]\nhost = "_"\n'
        'path = "/metrics"\n')
    n = xmpp_node_with(tmp_path_factory.mktemp("dashboard"), "dashboard@localhost",
                       test_node.keys_file, users=("alice", "bob", "carol"),
                       modules_toml="[modules.mod_ping]\n" + instrumentation)
    n.http_port = http_port  # type: ignore[attr-defined]
    yield n
    n.kill()


def make_the_events_happen(node: MongooseNode, clients: list[Client], loop: Any) -> None:
    """Everything the dashboard graphs, on the node, each counted on the page. The
    worker goes last: a restarted worker starts its sums from zero."""
    port: int = node.http_port  # type: ignore[attr-defined]
    # Logins over STARTTLS (tcp_data before it, tls_data after), a delivered message.
    alice = Client(loop, f"alice@{DOMAIN}/dash", PASSWORD, port=node.c2s_port).connect()
    bob = Client(loop, f"bob@{DOMAIN}/dash", PASSWORD, port=node.c2s_port).connect()
    clients.extend([alice, bob])
    # alice's worker may see bob's session a moment late (the session table is
    # replicated between workers): headlines until one arrives, then the message.
    wait_reachable(lambda body: alice.send_message(bob.jid, body, "headline"), bob)
    alice.send_message(bob.jid, "hello")
    wait_until(lambda: "hello" in bob.bodies(), timeout=15,
               what=lambda: f"bob's message; bob got {bob.bodies()}, alice got "
               f"{[str(m) for m in alice.messages]}")

    # A wrong password: c2s_auth_failed.
    intruder = Client(loop, f"alice@{DOMAIN}/bad", "not-the-password", port=node.c2s_port)
    clients.append(intruder)
    assert intruder.try_connect() == "failed_auth"

    # A chat message to an offline user bounces; a headline to one is dropped; a stanza
    # for a domain this node does not serve has no route.
    alice.send_message(f"carol@{DOMAIN}", "are you there?")
    alice.send_message(f"carol@{DOMAIN}", "news", mtype="headline")
    alice.send_message("someone@elsewhere.example", "hello out there")

    # A session actor that crashes: actor_crashed{kind="C2S"}, and a logout.
    victim = Client(loop, f"bob@{DOMAIN}/crash", PASSWORD, port=node.c2s_port).connect()
    clients.append(victim)
    victim.send_raw("<iq type='set' id='boom'><crash xmlns='urn:mongoose:test'/></iq>")
    wait_until(victim.disconnected.is_set, timeout=15, what="the crashed session dropped")
    # A session that ends in order: a logout and actor_stopped{kind="C2S"}.
    bob.disconnect()

    expected = [
        ("sm_session_logins_total", {}, 3), ("c2s_auth_failed_count_total", {}, 1),
        ("sm_message_bounced_count_total", {}, 1), ("router_stanza_dropped_count_total", {}, 1),
        ("router_no_route_found_count_total", {}, 1),
        ("actor_crashed_count_total", {"kind": "C2S"}, 1),
        ("sm_session_logouts_total", {}, 1), ("actor_stopped_count_total", {"kind": "C2S"}, 1),
        ("xmpp_element_in_message_count_total", {}, 5),
        ("c2s_message_processed_time_count", {}, 5),
        ("tcp_data_in_byte_size_total", {}, 1), ("tls_data_in_byte_size_total", {}, 1),
        ("tcp_data_out_byte_size_total", {}, 1), ("tls_data_out_byte_size_total", {}, 1),
        ("auth_authorize_count_total", {}, 4), ("storage_query_count_total", {}, 4),
    ]

    def short() -> list[str]:
        samples = scrape(port)
        return [f"{name}{labels or ''} < {at_least}" for name, labels, at_least in expected
                if total(samples, name, **labels) < at_least]

    wait_until(lambda: not short(), timeout=30,
               what=lambda: f"the events counted on the page: {short()}")

    # A worker killed with SIGKILL: its supervisor in the root restarts it,
    # actor_restarted{kind="WorkerProcess"}; its gauges come back on the page.
    os.kill(_worker_os_pid(node, 2), 9)
    node.wait_for("worker_up", worker=2, timeout=30)

    def restarted() -> bool:
        samples = scrape(port)
        return (total(samples, "actor_restarted_count_total", kind="WorkerProcess") >= 1
                and any(s.labels.get("worker") == "2" for s in samples
                        if s.name == "system_memory_total"))

    wait_until(restarted, timeout=30, what="the killed worker's restart on the page")
    # A session that starts and ends after the restart, so that actor_started and
    # actor_stopped are on the page whichever worker had the sessions before.
    Client(loop, f"carol@{DOMAIN}/late", PASSWORD, port=node.c2s_port).connect().disconnect()


def test_every_dashboard_metric_is_on_a_real_node_page(node, clients, loop):
    """Every metric a panel or a variable queries is on the node's page once the events
    happened, with the labels the query filters and groups by, and a sample matching
    each exact (=) matcher."""
    make_the_events_happen(node, clients, loop)
    dashboard = load_dashboard()
    wanted: dict[str, list[tuple[str, Query]]] = {}
    for panel, target in queries(dashboard):
        query = promql_selectors(target["expr"])
        for selector in query.selectors:
            wanted.setdefault(selector.name, []).append((panel["title"], query))
    for name, query, label in templating_queries(dashboard):
        query.grouping.add(label)
        for selector in query.selectors:
            wanted.setdefault(selector.name, []).append((f"variable {name}", query))

    port = node.http_port

    def missing() -> list[str]:
        return sorted(set(wanted) - set(by_name(scrape(port))))

    # The probe gauges appear a probe interval after each process starts.
    wait_until(lambda: not missing(), timeout=30,
               what=lambda: f"the dashboard's metrics on /metrics, missing {missing()}")
    samples = by_name(scrape(port))
    problems = []
    for name, uses in sorted(wanted.items()):
        labels = {k for sample in samples[name] for k in sample}
        for title, query in uses:
            for selector in query.selectors:
                if selector.name != name:
                    continue
                named = (set(selector.matchers) | query.grouping) - TARGET_LABELS
                if named - labels:
                    problems.append(f"{title}: {name} has no label {sorted(named - labels)}")
                for key, (op, value) in selector.matchers.items():
                    if op == "=" and key not in TARGET_LABELS and not any(
                            s.get(key) == value for s in samples[name]):
                        problems.append(f"{title}: no {name}{{{key}={value!r}}}")
                if "host_type" in labels and "host_type" not in selector.matchers \
                        and not title.startswith("variable"):
                    problems.append(f"{title}: {name} is not filtered by $host_type")
    assert not problems, "\n".join(problems)

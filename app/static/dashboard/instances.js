/* The scheduler instances: where each runs, its last heartbeat, its load; every 2 s. */
"use strict";

(function () {
  var el = Dash.el;
  var rows = document.getElementById("instance-rows");
  var error = document.getElementById("instances-error");

  /** How long ago `value` was, for people: "3 s ago", "2 min ago", "1 h 5 min ago". */
  function ago(value, now) {
    var then = Date.parse(value);
    if (isNaN(then)) {
      return "";
    }
    var seconds = Math.max(0, Math.round((now - then) / 1000));
    if (seconds < 60) {
      return seconds + " s ago";
    }
    if (seconds < 3600) {
      return Math.floor(seconds / 60) + " min ago";
    }
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min ago";
  }

  /** The server's clock when it answered, so that a skewed browser clock changes no age. */
  function serverNow(result) {
    var date = result.response ? Date.parse(result.response.headers.get("Date") || "") : NaN;
    return isNaN(date) ? Date.now() : date;
  }

  function names(list) {
    return list === null || list === undefined ? "all" : list.join(", ") || "none";
  }

  function row(instance, now) {
    var tr = el("tr", { "data-instance": instance.id, "data-state": instance.state });
    tr.appendChild(el("td", { "data-field": "id" }, instance.id));
    tr.appendChild(el("td", { "data-field": "host" }, instance.host));
    tr.appendChild(el("td", { "data-field": "pid" }, instance.pid));
    var started = el("td", { "data-field": "started", title: instance.started_at });
    started.textContent = Dash.time(instance.started_at);
    tr.appendChild(started);
    var heartbeat = el("td", { "data-field": "heartbeat", title: instance.heartbeat_at });
    heartbeat.appendChild(document.createTextNode(Dash.time(instance.heartbeat_at) + " "));
    var age = ago(instance.heartbeat_at, now);
    heartbeat.appendChild(el("span", { class: "muted", "data-age": "" }, age && "(" + age + ")"));
    tr.appendChild(heartbeat);
    var state = el("td", { "data-field": "state" });
    state.appendChild(el("span", { class: "badge", "data-state": instance.state }, instance.state));
    tr.appendChild(state);
    // An instance of a version before 0015 does not say its lease.
    var lease = instance.lease_s === null || instance.lease_s === undefined ? "?" : instance.lease_s + " s";
    tr.appendChild(el("td", { "data-field": "lease" }, lease));
    // An instance of a version before 0010 does not say how many slots it has.
    var slots = instance.slots === null || instance.slots === undefined ? "?" : instance.slots;
    var load = el("td", { "data-field": "load", "data-running": instance.running });
    load.setAttribute("data-slots", String(slots));
    load.textContent = instance.running + " / " + slots;
    tr.appendChild(load);
    tr.appendChild(el("td", { "data-field": "types" }, names(instance.types)));
    tr.appendChild(el("td", { "data-field": "queues" }, names(instance.queues)));
    return tr;
  }

  function refresh() {
    return Dash.fetchJson("/api/instances").then(function (result) {
      if (!result.ok || !Array.isArray(result.body)) {
        Dash.show(error, Dash.errorText(result));
        return;
      }
      Dash.show(error, "");
      var now = serverNow(result);
      Dash.clear(rows);
      result.body.forEach(function (instance) {
        rows.appendChild(row(instance, now));
      });
      if (!result.body.length) {
        var empty = el("tr");
        empty.appendChild(
          el(
            "td",
            { colspan: "9", class: "muted" },
            "No scheduler instance is running: queued tasks wait until one starts."
          )
        );
        rows.appendChild(empty);
      }
    });
  }

  Dash.poll(refresh, 2000);
})();

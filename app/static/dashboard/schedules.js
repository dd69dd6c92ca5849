/* The schedules: when each fires next, what it did last, its counts; pause and resume. */
"use strict";

(function () {
  var PAGE_SIZE = 100;
  var el = Dash.el;
  var rows = document.getElementById("schedule-rows");
  var error = document.getElementById("schedules-error");
  var empty = document.getElementById("schedules-empty");
  var more = document.getElementById("more");
  // How many pages the table shows: "More" adds one; each refresh reloads them all.
  var pages = 1;

  function when(schedule) {
    if (schedule.cron) {
      return schedule.timezone === "UTC" ? schedule.cron : schedule.cron + " (" + schedule.timezone + ")";
    }
    return "every " + schedule.interval_s + " s";
  }

  function lastFiring(schedule) {
    var last = schedule.last_firing;
    var cell = el("td");
    if (!last) {
      cell.textContent = "-";
      return cell;
    }
    var text = last.outcome + (last.at ? " " + Dash.time(last.at) : "");
    if (last.batch_id && last.outcome === "fired") {
      cell.appendChild(el("a", { href: Dash.batchUrl(last.batch_id), title: last.batch_id }, text));
    } else {
      cell.appendChild(el("span", { title: last.error || "" }, text));
    }
    cell.setAttribute("data-outcome", last.outcome);
    return cell;
  }

  function toggle(schedule) {
    var button = el("button", { type: "button" }, schedule.paused ? "Resume" : "Pause");
    button.addEventListener("click", function () {
      button.disabled = true;
      var options = {
        method: "PATCH",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ paused: !schedule.paused }),
      };
      Dash.fetchJson(Dash.apiScheduleUrl(schedule.id), options).then(function (result) {
        Dash.show(error, result.ok ? "" : Dash.errorText(result));
        refresh();
      });
    });
    return button;
  }

  function row(schedule) {
    var tr = el("tr", { "data-schedule-id": schedule.id, "data-paused": String(schedule.paused) });
    tr.appendChild(el("td", null, schedule.id));
    tr.appendChild(el("td", null, when(schedule)));
    var next = schedule.next_firings[0];
    tr.appendChild(el("td", { title: next || "" }, next ? Dash.time(next) : "-"));
    tr.appendChild(lastFiring(schedule));
    ["fired", "skipped", "missed", "failed"].forEach(function (name) {
      tr.appendChild(el("td", { "data-count": name }, schedule.counts[name]));
    });
    var state = el("td");
    state.appendChild(el("span", { class: "badge" }, schedule.paused ? "paused" : "active"));
    state.appendChild(document.createTextNode(" "));
    state.appendChild(toggle(schedule));
    tr.appendChild(state);
    return tr;
  }

  function load(cursor, left, found) {
    var url = "/api/schedules?limit=" + PAGE_SIZE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    return Dash.fetchJson(url).then(function (result) {
      if (!result.ok || !Array.isArray(result.body)) {
        return { error: Dash.errorText(result) };
      }
      var all = found.concat(result.body);
      var next = Dash.nextCursor(result.response.headers.get("Link"));
      if (next && left > 1) {
        return load(next, left - 1, all);
      }
      return { schedules: all, more: Boolean(next) };
    });
  }

  function refresh() {
    return load(null, pages, []).then(function (got) {
      if (got.error) {
        Dash.show(error, got.error);
        return;
      }
      Dash.show(error, "");
      Dash.clear(rows);
      got.schedules.forEach(function (schedule) {
        rows.appendChild(row(schedule));
      });
      empty.hidden = got.schedules.length > 0;
      more.hidden = !got.more;
    });
  }

  more.addEventListener("click", function () {
    pages += 1;
    refresh();
  });
  Dash.poll(refresh, 2000);
})();

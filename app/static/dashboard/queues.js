/* The queues: their tasks by status, their limits (editable), pause, resume, delete. */
"use strict";

(function () {
  var el = Dash.el;
  var rows = document.getElementById("queue-rows");
  var error = document.getElementById("queues-error");
  // While a limit is being typed, refreshes leave the rows alone.
  var editing = false;
  // The queue whose Delete button was clicked once, asking for a second click.
  var asking = null;

  // What the last action was refused for: shown until the next action, through the
  // refreshes (which would otherwise clear it at once).
  var refused = "";

  function send(url, method, body) {
    var options = { method: method, headers: { "Content-Type": "application/json" } };
    if (body !== undefined) {
      options.body = JSON.stringify(body);
    }
    refused = "";
    return Dash.fetchJson(url, options).then(function (result) {
      refused = result.ok ? "" : Dash.errorText(result);
      editing = false;
      return refresh();
    });
  }

  function toggle(queue) {
    var button = el("button", { type: "button" }, queue.paused ? "Resume" : "Pause");
    button.addEventListener("click", function () {
      button.disabled = true;
      send(Dash.apiQueueUrl(queue.name) + (queue.paused ? "/resume" : "/pause"), "POST");
    });
    return button;
  }

  // An empty queue other than default can be deleted: a first click asks (and the
  // refreshes keep asking), a second sends.
  function remove(queue) {
    var button = el("button", { type: "button", class: "delete" }, "Delete");
    function ask() {
      button.textContent = "Delete?";
      button.setAttribute("aria-label", "Click again to delete the queue " + queue.name);
    }
    if (asking === queue.name) {
      ask();
    }
    button.addEventListener("click", function () {
      if (asking !== queue.name) {
        asking = queue.name;
        ask();
        return;
      }
      asking = null;
      button.disabled = true;
      send(Dash.apiQueueUrl(queue.name), "DELETE");
    });
    return button;
  }

  function empty(queue) {
    return Object.keys(queue.counts).every(function (status) {
      return queue.counts[status] === 0;
    });
  }

  function number(value) {
    if (value.trim() === "") {
      return null;
    }
    var parsed = Number(value);
    return Number.isFinite(parsed) ? parsed : value; // the API names what is wrong
  }

  function limits(queue) {
    var form = el("form", { class: "limits", "data-queue": queue.name });
    var limit = el("input", {
      type: "text", inputmode: "numeric", size: "6", name: "concurrency_limit",
      "aria-label": "Concurrency limit of " + queue.name,
      value: queue.concurrency_limit === null ? "" : String(queue.concurrency_limit),
    });
    var rate = el("input", {
      type: "text", inputmode: "decimal", size: "6", name: "rate_limit_per_s",
      "aria-label": "Rate limit of " + queue.name,
      value: queue.rate_limit_per_s === null ? "" : String(queue.rate_limit_per_s),
    });
    [limit, rate].forEach(function (input) {
      input.addEventListener("input", function () {
        editing = true;
      });
    });
    form.appendChild(limit);
    form.appendChild(rate);
    form.appendChild(el("button", { type: "submit" }, "Set"));
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      send(Dash.apiQueueUrl(queue.name), "PUT", {
        concurrency_limit: number(limit.value),
        rate_limit_per_s: number(rate.value),
      });
    });
    return form;
  }

  // Every status a queue counts, one column each.
  var COUNTED = ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"];

  function row(queue) {
    var tr = el("tr", { "data-queue": queue.name, "data-paused": String(queue.paused) });
    tr.appendChild(el("td", null, queue.name));
    COUNTED.forEach(function (status) {
      tr.appendChild(el("td", { "data-count": status }, queue.counts[status]));
    });
    var settings = el("td", { colspan: "2" });
    settings.appendChild(limits(queue));
    tr.appendChild(settings);
    var state = el("td");
    state.appendChild(el("span", { class: "badge" }, queue.state));
    state.appendChild(document.createTextNode(" "));
    state.appendChild(toggle(queue));
    if (queue.name !== "default" && empty(queue)) {
      state.appendChild(document.createTextNode(" "));
      state.appendChild(remove(queue));
    }
    tr.appendChild(state);
    return tr;
  }

  function refresh() {
    if (editing) {
      return Promise.resolve();
    }
    return Dash.fetchJson("/api/queues").then(function (result) {
      if (!result.ok || !Array.isArray(result.body)) {
        Dash.show(error, Dash.errorText(result));
        return;
      }
      Dash.show(error, refused);
      Dash.clear(rows);
      result.body.forEach(function (queue) {
        rows.appendChild(row(queue));
      });
    });
  }

  Dash.poll(refresh, 2000);
})();

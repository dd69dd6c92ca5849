/* One task: details, attempts, blockers, the actions that would succeed and the graph, as
 * tasks change (without the event stream: every 2 s, the graph every second). Cancel and
 * Retry show only where the server says they would succeed. */
"use strict";

(function () {
  var el = Dash.el;
  // Root causes listed as links; the rest are counted.
  var SHOWN_ROOTS = 100;
  var taskId = document.getElementById("main").getAttribute("data-task-id") || "";
  var statusBadge = document.getElementById("task-status");
  var taskError = document.getElementById("task-error");
  var details = document.getElementById("details");
  var errorText = document.getElementById("error-text");
  var payload = document.getElementById("payload");
  var result = document.getElementById("result");
  var blockersList = document.getElementById("blockers");
  var rootsList = document.getElementById("root-causes");
  var actionMessage = document.getElementById("action-message");
  var cancelButton = document.getElementById("cancel");
  var retryButton = document.getElementById("retry");
  var retryInstead = document.getElementById("retry-instead");
  var retryInsteadLink = document.getElementById("retry-instead-link");
  var found = document.getElementById("task-found");
  var missing = document.getElementById("task-missing");
  var batchLine = document.getElementById("task-batch");
  var batchLink = document.getElementById("batch-link");
  var batchListLink = document.getElementById("batch-list-link");
  var graphBox = document.getElementById("graph");
  var graphNote = document.getElementById("graph-note");
  var attemptRows = document.getElementById("attempt-rows");
  var attemptsNote = document.getElementById("attempts-note");
  // The attempts as last drawn (their JSON), and the tracebacks opened, by attempt number:
  // a refresh that brings nothing new leaves the rows alone, and one that redraws them
  // keeps open what the reader opened.
  var shownAttempts = null;
  var openTracebacks = {};

  var FIELDS = [
    ["type", "Type"],
    ["status", "Status"],
    ["error_code", "Error code"],
    ["progress", "Progress"],
    ["attempts", "Attempts"],
    ["max_attempts", "Max attempts"],
    ["queue", "Queue"],
    ["priority", "Priority"],
    ["duration_ms", "Duration (ms)"],
    ["timeout_ms", "Timeout (ms)"],
    ["retry_backoff_ms", "Retry backoff (ms)"],
    ["trigger_rule", "Trigger rule"],
    ["dependencies", "Dependencies"],
    ["worker", "Worker"],
    ["created_at", "Created"],
    ["updated_at", "Updated"],
    ["run_at", "Run at"],
    ["started_at", "Started"],
    ["finished_at", "Finished"],
  ];
  var TIMES = { created_at: 1, updated_at: 1, run_at: 1, started_at: 1, finished_at: 1 };

  function taskLink(id) {
    return el("a", { href: Dash.taskUrl(id) }, id);
  }

  function json(value) {
    return value === null || value === undefined ? "-" : JSON.stringify(value, null, 2);
  }

  function renderTask(task) {
    statusBadge.textContent = task.status;
    statusBadge.setAttribute("data-status", task.status);
    Dash.clear(details);
    FIELDS.forEach(function (field) {
      var value = task[field[0]];
      details.appendChild(el("dt", null, field[1]));
      var dd = el("dd");
      if (field[0] === "dependencies") {
        if (!value || !value.length) {
          dd.textContent = "none";
        }
        (value || []).forEach(function (id, i) {
          if (i) {
            dd.appendChild(document.createTextNode(", "));
          }
          dd.appendChild(taskLink(id));
        });
      } else if (field[0] === "attempts") {
        dd.textContent = Dash.attempts(task);
        dd.setAttribute("title", Dash.ATTEMPTS_NOTE);
      } else if (field[0] === "max_attempts") {
        dd.textContent = value + " per run (the submit starts a run, and so does each retry)";
      } else if (TIMES[field[0]]) {
        dd.textContent = value ? Dash.time(value) + " (" + value + ")" : "-";
      } else {
        dd.textContent = value === null || value === undefined ? "-" : String(value);
      }
      details.appendChild(dd);
    });
    errorText.textContent = task.error ? String(task.error) : "-";
    payload.textContent = json(task.payload);
    result.textContent = json(task.result);
    batchLine.hidden = !task.batch_id;
    if (task.batch_id) {
      batchLink.textContent = task.batch_id;
      batchLink.setAttribute("href", Dash.batchPageUrl(task.batch_id));
      batchListLink.setAttribute("href", Dash.batchUrl(task.batch_id));
    }
  }

  /** Show the buttons the server's rules allow now; a race can still refuse one. */
  function renderChoices(can) {
    cancelButton.hidden = !can.cancel;
    retryButton.hidden = !can.retry;
    retryInstead.hidden = !can.retry_instead;
    if (can.retry_instead) {
      retryInsteadLink.textContent = can.retry_instead;
      retryInsteadLink.setAttribute("href", Dash.taskUrl(can.retry_instead));
    }
  }

  /** A span of time for people: "850 ms", "3.2 s", "2 min 5 s", "1 h 3 min". */
  function span(ms) {
    var whole = Math.max(0, Math.round(ms));
    if (whole < 1000) {
      return whole + " ms";
    }
    if (whole < 60000) {
      return (whole / 1000).toFixed(1) + " s";
    }
    var seconds = Math.floor(whole / 1000);
    if (seconds < 3600) {
      return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    }
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }

  /** How long a finished attempt took, from the server's own times; "-" until it ends. */
  function attemptDuration(attempt) {
    var start = attempt.started_at ? Date.parse(attempt.started_at) : NaN;
    var end = attempt.finished_at ? Date.parse(attempt.finished_at) : NaN;
    return isNaN(start) || isNaN(end) ? "-" : span(end - start);
  }

  function timeCell(value) {
    return el("td", { title: value || null }, Dash.time(value));
  }

  function text(value) {
    return value === null || value === undefined || value === "" ? "-" : String(value);
  }

  function tracebackDetails(attempt) {
    var number = String(attempt.attempt);
    var box = el("details", { class: "traceback" });
    box.appendChild(el("summary", null, "Traceback"));
    box.appendChild(el("pre", { class: "box" }, attempt.traceback));
    box.open = Boolean(openTracebacks[number]);
    box.addEventListener("toggle", function () {
      if (box.open) {
        openTracebacks[number] = true;
      } else {
        delete openTracebacks[number];
      }
    });
    return box;
  }

  function attemptRow(attempt) {
    var tr = el("tr", { "data-attempt": attempt.attempt, "data-outcome": attempt.outcome });
    tr.appendChild(el("td", null, attempt.attempt));
    var outcome = el("td");
    outcome.appendChild(
      el("span", { class: "badge", "data-status": attempt.outcome }, attempt.outcome)
    );
    tr.appendChild(outcome);
    tr.appendChild(el("td", { class: "instance" }, text(attempt.instance)));
    tr.appendChild(el("td", null, text(attempt.host)));
    tr.appendChild(timeCell(attempt.started_at));
    tr.appendChild(timeCell(attempt.finished_at));
    tr.appendChild(el("td", null, attemptDuration(attempt)));
    var error = el("td", { class: "error" });
    error.appendChild(el("div", null, text(attempt.error)));
    if (attempt.traceback) {
      error.appendChild(tracebackDetails(attempt));
    }
    tr.appendChild(error);
    tr.appendChild(el("td", null, text(attempt.error_code)));
    return tr;
  }

  function renderAttempts(answer) {
    var list = Array.isArray(answer.attempts) ? answer.attempts : [];
    var drawn = JSON.stringify(answer);
    if (drawn === shownAttempts) {
      return;
    }
    shownAttempts = drawn;
    Dash.clear(attemptRows);
    list.forEach(function (attempt) {
      attemptRows.appendChild(attemptRow(attempt));
    });
    if (!list.length) {
      var empty = el("tr");
      empty.appendChild(el("td", { colspan: "9", class: "muted" }, "No attempt yet."));
      attemptRows.appendChild(empty);
    }
    Dash.show(
      attemptsNote,
      answer.total > list.length
        ? "The latest " + list.length + " of " + answer.total + " attempts are listed."
        : ""
    );
  }

  function renderBlockers(answer) {
    Dash.clear(blockersList);
    Dash.clear(rootsList);
    (answer.blockers || []).forEach(function (b) {
      var li = el("li", null, b.kind);
      if (b.task_id) {
        li.appendChild(document.createTextNode(": "));
        li.appendChild(taskLink(b.task_id));
      }
      if (b.status) {
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("span", { class: "badge", "data-status": b.status }, b.status));
      }
      if (b.until) {
        li.appendChild(document.createTextNode(" until " + Dash.time(b.until)));
      }
      if (b.type) {
        li.appendChild(document.createTextNode(": no running scheduler has a handler for " + b.type));
      }
      blockersList.appendChild(li);
    });
    if (!blockersList.firstChild) {
      blockersList.appendChild(el("li", { class: "muted" }, "none"));
    }
    // A wide graph can have tens of thousands: the page shows the first ones.
    var roots = answer.root_causes || [];
    roots.slice(0, SHOWN_ROOTS).forEach(function (id) {
      var li = el("li");
      li.appendChild(taskLink(id));
      rootsList.appendChild(li);
    });
    if (roots.length > SHOWN_ROOTS) {
      var more = roots.length - SHOWN_ROOTS;
      rootsList.appendChild(el("li", { class: "muted" }, "and " + more.toLocaleString("en-US") + " more"));
    }
    if (answer.root_causes_truncated) {
      rootsList.appendChild(
        el("li", { class: "muted" }, "the walk stopped after 100,000 tasks: more may lie below")
      );
    } else if (!rootsList.firstChild) {
      rootsList.appendChild(el("li", { class: "muted" }, "none"));
    }
  }

  function refreshTask() {
    return Promise.all([
      Dash.fetchJson(Dash.apiTaskUrl(taskId)),
      Dash.fetchJson(Dash.apiTaskUrl(taskId) + "/blockers"),
      Dash.fetchJson("/dashboard/actions/" + encodeURIComponent(taskId)),
      Dash.fetchJson(Dash.apiTaskUrl(taskId) + "/attempts"),
    ]).then(function (answers) {
      // Unknown (or deleted meanwhile): say so, and offer nothing to act on.
      var gone = answers[0].status === 404;
      missing.hidden = !gone;
      found.hidden = gone;
      if (gone) {
        Dash.show(taskError, "");
        return;
      }
      if (!answers[0].ok || !answers[0].body) {
        Dash.show(taskError, Dash.errorText(answers[0]));
        return;
      }
      Dash.show(taskError, "");
      renderTask(answers[0].body);
      if (answers[1].ok && answers[1].body) {
        renderBlockers(answers[1].body);
      }
      if (answers[2].ok && answers[2].body) {
        renderChoices(answers[2].body);
      }
      if (answers[3].ok && answers[3].body) {
        renderAttempts(answers[3].body);
      } else if (answers[3].status !== 404) {
        // A 404 here is the task deleted since its read: the next refresh says so.
        Dash.show(attemptsNote, Dash.errorText(answers[3]));
        shownAttempts = null;
      }
    });
  }

  function refreshGraph() {
    var url = "/dashboard/graph/" + encodeURIComponent(taskId);
    return Dash.fetchJson(url).then(function (answer) {
      if (!answer.ok || !answer.body) {
        Dash.show(graphNote, Dash.errorText(answer));
        return;
      }
      Dash.show(
        graphNote,
        answer.body.truncated ? "Too many neighbours: only the nearest tasks are shown." : ""
      );
      DashGraph.render(graphBox, answer.body, taskId);
    });
  }

  function doneText(action, task) {
    if (action === "retry") {
      return "Queued again.";
    }
    // A running task is asked to stop; it ends CANCELLED, or COMPLETED if it finishes first.
    return task && task.status === "RUNNING" ? "Asked to stop." : "Cancelled.";
  }

  function act(action, button) {
    button.disabled = true;
    actionMessage.className = "message";
    Dash.show(actionMessage, "");
    var url = Dash.apiTaskUrl(taskId) + "/" + action;
    return Dash.fetchJson(url, { method: "POST" })
      .then(function (answer) {
        if (answer.ok) {
          actionMessage.className = "message ok";
          Dash.show(actionMessage, doneText(action, answer.body));
        } else {
          actionMessage.className = "message error";
          Dash.show(actionMessage, Dash.errorText(answer));
        }
      })
      .catch(function () {
        actionMessage.className = "message error";
        Dash.show(actionMessage, "The server could not be reached.");
      })
      .then(function () {
        button.disabled = false;
        return Promise.all([refreshTask(), refreshGraph()]);
      });
  }

  cancelButton.addEventListener("click", function () {
    act("cancel", cancelButton);
  });
  retryButton.addEventListener("click", function () {
    act("retry", retryButton);
  });

  Dash.poll(refreshTask, 2000);
  Dash.poll(refreshGraph, 1000);
  Dash.onChanges(function () {
    return Promise.all([refreshTask(), refreshGraph()]);
  });
})();

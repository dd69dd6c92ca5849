/* One task: details, blockers and the actions that would succeed every 2 s, the graph
 * every second. Cancel and Retry show only where the server says they would succeed. */
"use strict";

(function () {
  var el = Dash.el;
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
  var graphBox = document.getElementById("graph");
  var graphNote = document.getElementById("graph-note");

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
      batchLink.setAttribute("href", Dash.batchUrl(task.batch_id));
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
    (answer.root_causes || []).forEach(function (id) {
      var li = el("li");
      li.appendChild(taskLink(id));
      rootsList.appendChild(li);
    });
    if (!rootsList.firstChild) {
      rootsList.appendChild(el("li", { class: "muted" }, "none"));
    }
  }

  function refreshTask() {
    return Promise.all([
      Dash.fetchJson(Dash.apiTaskUrl(taskId)),
      Dash.fetchJson(Dash.apiTaskUrl(taskId) + "/blockers"),
      Dash.fetchJson("/dashboard/actions/" + encodeURIComponent(taskId)),
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
})();

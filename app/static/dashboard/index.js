/* The overview: counts by status as tasks change (every 2 s without the event stream), and
 * the filterable, paginated task table. */
"use strict";

(function () {
  var PAGE_SIZE = 50;
  var el = Dash.el;
  var countsError = document.getElementById("counts-error");
  var rows = document.getElementById("task-rows");
  var listError = document.getElementById("list-error");
  var empty = document.getElementById("list-empty");
  var prev = document.getElementById("prev");
  var next = document.getElementById("next");
  var pageLabel = document.getElementById("page-label");
  var form = document.getElementById("filters");
  var statusInput = document.getElementById("filter-status");
  var typeInput = document.getElementById("filter-type");
  var batchInput = document.getElementById("filter-batch");

  // cursors[i] opens page i; null opens the first page.
  var cursors = [null];
  var page = 0;
  var nextPage = null;

  function refreshCounts() {
    return Dash.fetchJson("/dashboard/counts").then(function (result) {
      if (!result.ok || !result.body) {
        Dash.show(countsError, Dash.errorText(result));
        return;
      }
      Dash.show(countsError, "");
      Object.keys(result.body).forEach(function (status) {
        var cells = document.querySelectorAll(".count-value");
        for (var i = 0; i < cells.length; i += 1) {
          if (cells[i].getAttribute("data-count-for") === status) {
            cells[i].textContent = String(result.body[status]);
          }
        }
      });
    });
  }

  /** The filters the form holds, as query parameters. */
  function filters() {
    var params = new URLSearchParams();
    if (statusInput.value) {
      params.set("status", statusInput.value);
    }
    if (typeInput.value.trim()) {
      params.set("type", typeInput.value.trim());
    }
    if (batchInput.value.trim()) {
      params.set("batch_id", batchInput.value.trim());
    }
    return params;
  }

  function query(cursor) {
    var params = filters();
    params.set("limit", String(PAGE_SIZE));
    if (cursor) {
      params.set("cursor", cursor);
    }
    return "/api/tasks?" + params.toString();
  }

  function row(task) {
    var tr = el("tr", { "data-task-id": task.id });
    var idCell = el("td");
    idCell.appendChild(el("a", { href: Dash.taskUrl(task.id) }, task.id));
    tr.appendChild(idCell);
    tr.appendChild(el("td", null, task.type));
    var statusCell = el("td");
    statusCell.appendChild(el("span", { class: "badge", "data-status": task.status }, task.status));
    tr.appendChild(statusCell);
    tr.appendChild(el("td", null, task.priority));
    tr.appendChild(el("td", { title: Dash.ATTEMPTS_NOTE }, Dash.attempts(task)));
    tr.appendChild(el("td", { title: task.created_at }, Dash.time(task.created_at)));
    tr.appendChild(el("td", { title: task.updated_at }, Dash.time(task.updated_at)));
    return tr;
  }

  function loadPage() {
    var cursor = cursors[page];
    prev.disabled = true;
    next.disabled = true;
    return Dash.fetchJson(query(cursor)).then(function (result) {
      Dash.clear(rows);
      if (!result.ok || !Array.isArray(result.body)) {
        Dash.show(listError, Dash.errorText(result));
        empty.hidden = true;
        return;
      }
      Dash.show(listError, "");
      result.body.forEach(function (task) {
        rows.appendChild(row(task));
      });
      empty.hidden = result.body.length > 0;
      nextPage = Dash.nextCursor(result.response.headers.get("Link"));
      prev.disabled = page === 0;
      next.disabled = !nextPage;
      pageLabel.textContent = "Page " + (page + 1);
    });
  }

  function saveFilters() {
    var search = filters().toString();
    window.history.replaceState(null, "", search ? "?" + search : window.location.pathname);
  }

  /** Link the batch page while the list is filtered by a batch. */
  function showBatchLink() {
    var batchId = batchInput.value.trim();
    var link = document.getElementById("batch-graph-link");
    document.getElementById("batch-graph-line").hidden = !batchId;
    link.textContent = batchId;
    link.setAttribute("href", batchId ? Dash.batchPageUrl(batchId) : "#");
  }

  function restart() {
    var note = document.getElementById("status-note");
    if (note) {
      note.hidden = true; // the filters now say what the list shows
    }
    cursors = [null];
    page = 0;
    saveFilters();
    showBatchLink();
    loadPage();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    restart();
  });
  statusInput.addEventListener("change", restart);
  document.getElementById("refresh").addEventListener("click", loadPage);
  next.addEventListener("click", function () {
    if (!nextPage) {
      return;
    }
    cursors = cursors.slice(0, page + 1);
    cursors.push(nextPage);
    page += 1;
    loadPage();
  });
  prev.addEventListener("click", function () {
    if (page > 0) {
      page -= 1;
      loadPage();
    }
  });
  // Clicking a count filters the table by that status.
  Array.prototype.forEach.call(document.querySelectorAll(".count"), function (item) {
    item.addEventListener("click", function () {
      statusInput.value = item.getAttribute("data-status") || "";
      restart();
    });
  });

  // The server wrote the URL's filters into the form: a link such as /?batch_id=... lists
  // that batch.
  Dash.poll(refreshCounts, 2000);
  Dash.onChanges(refreshCounts);
  loadPage();
})();

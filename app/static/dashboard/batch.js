/* A batch: every task by layer, coloured live from the event stream, with its counts, its
 * critical path by measured durations and a timeline of its attempts. The page reads the
 * batch once, then applies each event the stream sends (filtered to this batch, starting
 * after the event the read included); it reads the batch again only when a task it does
 * not show appears (one a handler added), and polls only while it has no stream. Events
 * that arrive while a read is under way are applied again to its answer, past the event
 * number it included, so none is lost to the read. */
"use strict";

(function () {
  var el = Dash.el;
  var svg = DashGraph.svg;
  var batchId = document.getElementById("main").getAttribute("data-batch-id") || "";
  var found = document.getElementById("batch-found");
  var missing = document.getElementById("batch-missing");
  var errorLine = document.getElementById("batch-error");
  var liveLine = document.getElementById("batch-live");
  var stateBadge = document.getElementById("batch-state");
  var graphBox = document.getElementById("batch-graph");
  var graphNote = document.getElementById("graph-note");
  var criticalSummary = document.getElementById("critical-summary");
  var criticalList = document.getElementById("critical-path");
  var timelineBox = document.getElementById("timeline");
  var timelineNote = document.getElementById("timeline-note");

  var NODE_W = 150;
  var NODE_H = 26;
  var GAP_X = 46;
  var GAP_Y = 6;
  var PAD = 12;
  var PER_COLUMN = 40; // a wider layer wraps into more columns
  var BAND_H = 18; // the layer's label under it
  var MIN_BOX_H = 160;
  var MAX_TAB_NODES = 100; // more, and Tab skips the nodes (the list has every task)
  var MAX_BOX_H = 600;
  var MAX_LABEL = 20;
  var BAR_H = 10;
  var LANE_GAP = 3;
  var AXIS_H = 18;
  var POLL_MS = 5000;
  var FINISHED_POLL_MS = 30000; // a finished batch changes only by a retry
  var RELOAD_MS = 1000;
  var RETRY_MS = 3000; // after a read that failed
  var SLOW_DRAW_MS = 500;
  var TERMINAL = { COMPLETED: 1, FAILED: 1, CANCELLED: 1, UPSTREAM_FAILED: 1 };
  var OUTCOME_COLOURS = { QUEUED: "#fb8c00" }; // an attempt that ended back in the queue

  // What the page knows: the tasks by id (status, attempts, start and finish of the last
  // attempt), their order and edges, the attempts by "task attempt", the batch's counts.
  var view = null;
  var streaming = false;
  var closedSince = Date.now();
  var countsTimer = null;
  var countsAgain = false;
  var loading = false;
  var loadAgain = false;
  var during = null; // the events received while a read is under way
  var skew = Infinity; // how far this browser's clock runs ahead of the server's (ms)
  var userMoved = false; // the reader panned or zoomed: a resize keeps their view
  var suppressClick = false;
  var gone = false; // the server says no such batch
  var countsFailures = 0;
  var streamStarted = false;
  var reloadTimer = null;
  var drawPending = false;
  var slowTimer = null;
  var timelineDrawn = 0;
  var camera = { x: 0, y: 0, k: 1 };
  var scene = null; // the SVG group pan and zoom move

  function millis(value) {
    if (!value) {
      return null;
    }
    var ms = new Date(value).getTime();
    return isNaN(ms) ? null : ms;
  }

  function clip(text) {
    return text.length > MAX_LABEL ? text.slice(0, MAX_LABEL - 1) + "\u2026" : text;
  }

  function seconds(ms) {
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }

  function attemptKey(taskId, attempt) {
    return taskId + "\u0000" + attempt;
  }

  /** What decides the drawing: the tasks and the edges (statuses only repaint). */
  function shape(order, edges) {
    return order.join("\n") + "|" + edges.join("|");
  }

  /** The server's clock now, as this browser best knows it. */
  function serverNow() {
    return Date.now() - (isFinite(skew) ? skew : 0);
  }

  /** Narrow the skew: the server stamped `stamp` (ms) before this browser saw it. */
  function heard(stamp) {
    if (stamp !== null && !isNaN(stamp)) {
      skew = Math.min(skew, Date.now() - stamp);
    }
  }

  /** Turn the server's answer into the page's state. */
  function adopt(answer) {
    var tasks = {};
    var order = [];
    answer.tasks.forEach(function (t) {
      tasks[t.id] = {
        id: t.id,
        type: t.type,
        status: t.status,
        attempts: t.attempts,
        start: millis(t.started_at),
        finish: millis(t.finished_at),
      };
      order.push(t.id);
    });
    var attempts = {};
    answer.attempts.forEach(function (a) {
      attempts[attemptKey(a.task_id, a.attempt)] = {
        taskId: a.task_id,
        attempt: a.attempt,
        outcome: a.outcome,
        start: millis(a.started_at),
        end: millis(a.finished_at),
      };
    });
    return {
      tasks: tasks,
      order: order,
      edges: answer.edges,
      attempts: attempts,
      counts: answer.batch.counts,
      total: answer.batch.total,
      started: Boolean(answer.batch.first_started_at),
      truncated: answer.truncated,
      attemptsTruncated: Boolean(answer.attempts_truncated),
      limit: answer.limit,
      shape: shape(order, answer.edges),
    };
  }

  // -- the graph ------------------------------------------------------------------------

  /** Columns by depth, a wide layer wrapped; within a layer, tasks near their
   *  dependencies' rows first (one sweep), then in submission order. */
  function layout(state) {
    var nodes = state.order.map(function (id) {
      return { id: id };
    });
    var depth = DashGraph.depths(nodes, state.edges);
    var layers = [];
    state.order.forEach(function (id, i) {
      (layers[depth[id]] = layers[depth[id]] || []).push({ id: id, rank: i });
    });
    var parents = {};
    state.edges.forEach(function (e) {
      (parents[e[1]] = parents[e[1]] || []).push(e[0]);
    });
    var position = {};
    var row = {};
    var bands = [];
    var x = PAD;
    var height = 0;
    layers.forEach(function (layer) {
      layer.forEach(function (item) {
        var above = (parents[item.id] || []).filter(function (p) {
          return p in row;
        });
        item.key = above.length
          ? above.reduce(function (sum, p) {
              return sum + row[p];
            }, 0) / above.length
          : item.rank;
      });
      layer.sort(function (a, b) {
        return a.key - b.key || a.rank - b.rank;
      });
      layer.forEach(function (item, i) {
        var column = Math.floor(i / PER_COLUMN);
        var within = i % PER_COLUMN;
        row[item.id] = i;
        position[item.id] = {
          x: x + column * (NODE_W + GAP_X / 2),
          y: PAD + within * (NODE_H + GAP_Y),
        };
        height = Math.max(height, PAD * 2 + (within + 1) * (NODE_H + GAP_Y) - GAP_Y);
      });
      var columns = Math.ceil(layer.length / PER_COLUMN);
      var wide = columns * NODE_W + (columns - 1) * (GAP_X / 2);
      bands.push({ x: x, width: wide, count: layer.length });
      x += wide + GAP_X;
    });
    return {
      position: position,
      bands: bands,
      width: Math.max(x - GAP_X + PAD, NODE_W),
      height: height + BAND_H,
    };
  }

  function edgePath(plan, edges) {
    var parts = [];
    edges.forEach(function (e) {
      var from = plan.position[e[0]];
      var to = plan.position[e[1]];
      if (!from || !to) {
        return;
      }
      parts.push(DashGraph.curve(from.x + NODE_W, from.y + NODE_H / 2, to.x, to.y + NODE_H / 2));
    });
    return parts.join("");
  }

  function paint(group, status) {
    group.setAttribute("data-status", status);
    group.querySelector("rect").setAttribute("fill", DashGraph.colours[status] || "#ffffff");
    group.querySelector("text").setAttribute("fill", DashGraph.textColours[status] || "#ffffff");
    group.querySelector("title").textContent =
      group.getAttribute("data-task-id") + " (" + status + ")";
  }

  function drawGraph(state) {
    var plan = layout(state);
    var root = svg("svg", {
      width: "100%",
      height: "100%",
      role: "img",
      "aria-label": "Batch graph",
    });
    scene = svg("g", { class: "scene" });
    plan.bands.forEach(function (band, depth) {
      var top = plan.height - BAND_H;
      scene.appendChild(
        svg("rect", { class: "band", x: band.x - 4, y: 4, width: band.width + 8, height: top })
      );
      var label = svg("text", { class: "band-label", x: band.x, y: top + 14 });
      label.textContent = "layer " + (depth + 1) + " \u00b7 " + band.count;
      scene.appendChild(label);
    });
    scene.appendChild(svg("path", { class: "edge", d: edgePath(plan, state.edges) }));
    scene.appendChild(svg("path", { class: "edge critical-edge", d: "" }));
    state.order.forEach(function (id) {
      var at = plan.position[id];
      // A link: a click opens the task, a middle or Ctrl click opens it in a new tab, and
      // Tab reaches it.
      var group = svg("a", {
        class: "node",
        href: Dash.taskUrl(id),
        transform: "translate(" + at.x + "," + at.y + ")",
        "data-task-id": id,
      });
      if (state.order.length > MAX_TAB_NODES) {
        group.setAttribute("tabindex", "-1"); // Tab would cross every node to go past
      }
      group.appendChild(svg("title"));
      group.appendChild(svg("rect", { width: NODE_W, height: NODE_H, rx: 4, ry: 4 }));
      var label = svg("text", { x: 6, y: 17 });
      label.textContent = clip(id);
      group.appendChild(label);
      paint(group, state.tasks[id].status);
      scene.appendChild(group);
    });
    root.appendChild(scene);
    Dash.clear(graphBox);
    // As tall as the graph at full size, within bounds: a large one is fitted, then zoomed.
    graphBox.style.height = Math.min(MAX_BOX_H, Math.max(MIN_BOX_H, plan.height + 8)) + "px";
    graphBox.appendChild(root);
    state.plan = plan;
    state.groups = {};
    Array.prototype.forEach.call(scene.querySelectorAll(".node"), function (group) {
      state.groups[group.getAttribute("data-task-id")] = group;
    });
    fit();
  }

  // -- pan and zoom ---------------------------------------------------------------------

  function place() {
    if (scene) {
      scene.setAttribute(
        "transform",
        "translate(" + camera.x + "," + camera.y + ") scale(" + camera.k + ")"
      );
    }
  }

  function fit() {
    if (!view || !view.plan) {
      return;
    }
    var box = graphBox.getBoundingClientRect();
    var k = Math.min(box.width / view.plan.width, box.height / view.plan.height, 1);
    camera.k = Math.max(k, 0.02);
    camera.x = (box.width - view.plan.width * camera.k) / 2;
    camera.y = Math.max(0, (box.height - view.plan.height * camera.k) / 2);
    userMoved = false;
    place();
  }

  /** Zoom by `factor` keeping the point (px, py) of the box where it is. */
  function zoom(factor, px, py) {
    var k = Math.min(Math.max(camera.k * factor, 0.02), 4);
    camera.x = px - ((px - camera.x) * k) / camera.k;
    camera.y = py - ((py - camera.y) * k) / camera.k;
    camera.k = k;
    userMoved = true;
    place();
  }

  function centre() {
    var box = graphBox.getBoundingClientRect();
    return [box.width / 2, box.height / 2];
  }

  var drag = null;
  graphBox.addEventListener("pointerdown", function (event) {
    suppressClick = false;
    if (event.button !== 0) {
      return; // a middle or right click is the browser's (a link in a new tab, a menu)
    }
    drag = { x: event.clientX, y: event.clientY, cx: camera.x, cy: camera.y, moved: false };
  });
  graphBox.addEventListener("dragstart", function (event) {
    event.preventDefault(); // dragging a node pans; it does not carry the link away
  });
  window.addEventListener("pointermove", function (event) {
    if (!drag) {
      return;
    }
    var dx = event.clientX - drag.x;
    var dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) {
      drag.moved = true;
      userMoved = true;
    }
    camera.x = drag.cx + dx;
    camera.y = drag.cy + dy;
    place();
  });
  window.addEventListener("pointerup", function () {
    suppressClick = Boolean(drag && drag.moved);
    drag = null;
    // The click that ends a drag comes at once, if at all (not when released elsewhere).
    window.setTimeout(function () {
      suppressClick = false;
    }, 0);
  });
  graphBox.addEventListener(
    "click",
    function (event) {
      if (suppressClick) {
        event.preventDefault(); // the end of a drag, not a click on the node under it
        event.stopPropagation();
      }
      suppressClick = false;
    },
    true
  );
  // Ctrl (or Cmd) and the wheel zoom, as a trackpad's pinch does; the wheel alone
  // scrolls the page past the graph.
  graphBox.addEventListener(
    "wheel",
    function (event) {
      if (!event.ctrlKey && !event.metaKey) {
        return;
      }
      event.preventDefault();
      var box = graphBox.getBoundingClientRect();
      zoom(event.deltaY < 0 ? 1.2 : 1 / 1.2, event.clientX - box.left, event.clientY - box.top);
    },
    { passive: false }
  );
  graphBox.addEventListener("keydown", function (event) {
    var step = 60;
    var moves = {
      ArrowLeft: [step, 0],
      ArrowRight: [-step, 0],
      ArrowUp: [0, step],
      ArrowDown: [0, -step],
    };
    if (moves[event.key]) {
      camera.x += moves[event.key][0];
      camera.y += moves[event.key][1];
      userMoved = true;
      place();
    } else if (event.key === "+" || event.key === "=") {
      zoom(1.2, centre()[0], centre()[1]);
    } else if (event.key === "-") {
      zoom(1 / 1.2, centre()[0], centre()[1]);
    } else if (event.key === "0") {
      fit();
    } else {
      return;
    }
    event.preventDefault();
  });
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoom(1.25, centre()[0], centre()[1]);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoom(1 / 1.25, centre()[0], centre()[1]);
  });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  // A node reached with Tab is brought into view.
  graphBox.addEventListener("focusin", function (event) {
    var group = event.target.closest ? event.target.closest(".node") : null;
    if (!group || !view || !view.plan) {
      return;
    }
    var at = view.plan.position[group.getAttribute("data-task-id")];
    var box = graphBox.getBoundingClientRect();
    var x = camera.x + at.x * camera.k;
    var y = camera.y + at.y * camera.k;
    if (x < 0 || y < 0 || x + NODE_W * camera.k > box.width || y + NODE_H * camera.k > box.height) {
      camera.k = Math.max(camera.k, 0.6);
      camera.x = box.width / 2 - (at.x + NODE_W / 2) * camera.k;
      camera.y = box.height / 2 - (at.y + NODE_H / 2) * camera.k;
      userMoved = true;
      place();
    }
  });

  // -- counts, state, critical path -----------------------------------------------------

  /** The batch's state by the server's rule (GET /api/batches/<id>). */
  function batchState(state) {
    var c = state.counts;
    if (c.QUEUED + c.RUNNING) {
      return c.RUNNING || state.started ? "running" : "queued";
    }
    if (c.COMPLETED === state.total) {
      return "completed";
    }
    return c.FAILED + c.UPSTREAM_FAILED ? "failed" : "cancelled";
  }

  /** A batch the page holds whole is counted from its tasks (the counts agree with the
   *  colours); a larger one's counts come from the server (countsSoon). */
  function tally(state) {
    if (state.truncated) {
      return;
    }
    var counts = {};
    Object.keys(state.counts).forEach(function (status) {
      counts[status] = 0;
    });
    state.order.forEach(function (id) {
      var status = state.tasks[id].status;
      counts[status] = (counts[status] || 0) + 1;
    });
    state.counts = counts;
    state.total = state.order.length;
  }

  function finished(state) {
    return state.counts.QUEUED + state.counts.RUNNING === 0;
  }

  function drawCounts(state) {
    tally(state);
    Object.keys(state.counts).forEach(function (status) {
      var cell = document.querySelector('[data-count-for="' + status + '"]');
      if (cell) {
        cell.textContent = String(state.counts[status]);
      }
    });
    var label = batchState(state);
    stateBadge.textContent = label;
    stateBadge.setAttribute("data-state", label);
  }

  function duration(task, now) {
    if (task.start === null) {
      return 0;
    }
    if (task.status === "RUNNING") {
      return Math.max(0, now - task.start);
    }
    return task.finish !== null ? Math.max(0, task.finish - task.start) : 0;
  }

  /** The longest chain by duration: each task's finish is its duration after the latest
   *  finish of its dependencies; walk back from the latest. */
  function criticalPath(state, now) {
    var depth = DashGraph.depths(
      state.order.map(function (id) {
        return { id: id };
      }),
      state.edges
    );
    var byDepth = state.order.slice().sort(function (a, b) {
      return depth[a] - depth[b];
    });
    var parents = {};
    state.edges.forEach(function (e) {
      if (e[0] in state.tasks && e[1] in state.tasks) {
        (parents[e[1]] = parents[e[1]] || []).push(e[0]);
      }
    });
    var total = {};
    var via = {};
    var best = null;
    byDepth.forEach(function (id) {
      var before = 0;
      (parents[id] || []).forEach(function (p) {
        if (total[p] > before || (via[id] === undefined && total[p] === before)) {
          before = total[p];
          via[id] = p;
        }
      });
      total[id] = before + duration(state.tasks[id], now);
      if (best === null || total[id] > total[best]) {
        best = id;
      }
    });
    var path = [];
    for (var at = best; at !== null && at !== undefined; at = via[at]) {
      path.unshift(at);
    }
    return { path: path, total: best === null ? 0 : total[best] };
  }

  function drawCritical(state, now) {
    var found = criticalPath(state, now);
    Dash.clear(criticalList);
    Object.keys(state.groups).forEach(function (id) {
      state.groups[id].classList.remove("critical");
    });
    if (!found.path.length || found.total === 0) {
      criticalSummary.textContent = "No task has started yet.";
      scene.querySelector(".critical-edge").setAttribute("d", "");
      return;
    }
    criticalSummary.textContent =
      found.path.length +
      " task" +
      (found.path.length === 1 ? "" : "s") +
      ", " +
      seconds(found.total) +
      " in all.";
    var pairs = [];
    found.path.forEach(function (id, i) {
      state.groups[id].classList.add("critical");
      if (i) {
        pairs.push([found.path[i - 1], id]);
      }
      var item = el("li", { "data-task-id": id });
      item.appendChild(el("a", { href: Dash.taskUrl(id) }, id));
      item.appendChild(
        document.createTextNode(" " + seconds(duration(state.tasks[id], now)) + " ")
      );
      item.appendChild(
        el(
          "span",
          { class: "badge", "data-status": state.tasks[id].status },
          state.tasks[id].status
        )
      );
      criticalList.appendChild(item);
    });
    scene.querySelector(".critical-edge").setAttribute("d", edgePath(state.plan, pairs));
  }

  // -- the timeline ---------------------------------------------------------------------

  /** Every attempt as a bar: those that ended, and each running task's current one. */
  function bars(state, now) {
    var list = Object.keys(state.attempts).map(function (key) {
      return state.attempts[key];
    });
    state.order.forEach(function (id) {
      var task = state.tasks[id];
      if (
        task.status === "RUNNING" &&
        task.start !== null &&
        !(attemptKey(id, task.attempts) in state.attempts)
      ) {
        list.push({
          taskId: id,
          attempt: task.attempts,
          outcome: "RUNNING",
          start: task.start,
          end: now,
        });
      }
    });
    return list.filter(function (bar) {
      return bar.start !== null && bar.end !== null;
    });
  }

  function drawTimeline(state, now) {
    timelineDrawn = Date.now();
    var list = bars(state, now).sort(function (a, b) {
      return a.start - b.start || a.end - b.end;
    });
    Dash.clear(timelineBox);
    if (!list.length) {
      Dash.show(timelineNote, "No attempt has started yet.");
      return;
    }
    Dash.show(
      timelineNote,
      state.attemptsTruncated
        ? "The batch has more attempts than the page read: the earliest are left out."
        : ""
    );
    var lanes = []; // the end of each row's last bar
    list.forEach(function (bar) {
      var lane = 0;
      while (lane < lanes.length && lanes[lane] > bar.start) {
        lane += 1;
      }
      lanes[lane] = bar.end;
      bar.lane = lane;
    });
    var first = list[0].start;
    var last = Math.max.apply(
      null,
      list.map(function (bar) {
        return bar.end;
      })
    );
    var span = Math.max(last - first, 1);
    var width = Math.max(timelineBox.clientWidth - 2, 300);
    var height = AXIS_H + lanes.length * (BAR_H + LANE_GAP) + LANE_GAP;
    var root = svg("svg", {
      width: width,
      height: height,
      role: "img",
      "aria-label": "Attempts over time",
    });
    for (var tick = 0; tick <= 4; tick += 1) {
      var tx = (tick / 4) * (width - 60);
      var label = svg("text", { x: tx + 2, y: 12, class: "tick" });
      label.textContent = "+" + seconds((tick / 4) * span);
      root.appendChild(label);
      root.appendChild(svg("line", { x1: tx, y1: AXIS_H - 4, x2: tx, y2: height, class: "grid" }));
    }
    list.forEach(function (bar) {
      var x = ((bar.start - first) / span) * (width - 60);
      var w = Math.max(((bar.end - bar.start) / span) * (width - 60), 2);
      var rect = svg("rect", {
        x: x,
        y: AXIS_H + LANE_GAP + bar.lane * (BAR_H + LANE_GAP),
        width: w,
        height: BAR_H,
        class: "bar",
        "data-task-id": bar.taskId,
        "data-outcome": bar.outcome,
        fill: OUTCOME_COLOURS[bar.outcome] || DashGraph.colours[bar.outcome] || "#9e9e9e",
      });
      var title = svg("title");
      title.textContent =
        bar.taskId +
        " \u00b7 attempt " +
        bar.attempt +
        " \u00b7 " +
        bar.outcome +
        " \u00b7 " +
        seconds(bar.end - bar.start);
      rect.appendChild(title);
      root.appendChild(rect);
    });
    timelineBox.appendChild(root);
  }

  // -- drawing and events ---------------------------------------------------------------

  /** Counts at once; the critical path and the timeline (thousands of shapes) at most
   *  every SLOW_DRAW_MS while changes pour in. */
  function drawAll() {
    drawPending = false;
    if (!view) {
      return;
    }
    var now = serverNow();
    drawCounts(view);
    if (Date.now() - timelineDrawn < SLOW_DRAW_MS) {
      redrawLater(SLOW_DRAW_MS - (Date.now() - timelineDrawn));
      return;
    }
    drawCritical(view, now);
    drawTimeline(view, now);
  }

  function redrawSoon() {
    if (!drawPending) {
      drawPending = true;
      window.requestAnimationFrame(drawAll);
    }
  }

  function redrawLater(ms) {
    if (slowTimer === null) {
      slowTimer = window.setTimeout(function () {
        slowTimer = null;
        redrawSoon();
      }, ms);
    }
  }

  /** Apply one change the stream sent: the task's status, its attempt, the counts. */
  function apply(change) {
    var task = view.tasks[change.task_id];
    var at = millis(change.at);
    heard(at);
    if (view.truncated) {
      countsSoon(); // the counts of a batch larger than the graph come from the server
    }
    if (!task) {
      if (!view.truncated) {
        reloadSoon(); // a task added by a handler of the batch: draw the graph again
      }
      return;
    }
    task.status = change.status;
    task.attempts = Math.max(task.attempts, change.attempt);
    if (change.status === "RUNNING") {
      task.start = at;
      task.finish = null;
      view.started = true;
    } else if (change.attempt > 0 && (change.status in TERMINAL || change.status === "QUEUED")) {
      var key = attemptKey(task.id, change.attempt);
      if (!(key in view.attempts) && task.start !== null) {
        view.attempts[key] = {
          taskId: task.id,
          attempt: change.attempt,
          // Back in the queue after a failure (to be retried) is how the history says it.
          outcome:
            change.status === "QUEUED" && /^attempt failed/.test(change.reason || "")
              ? "FAILED"
              : change.status,
          start: task.start,
          end: at,
        };
      }
      if (change.status in TERMINAL) {
        task.finish = at;
      }
    }
    var group = view.groups[task.id];
    if (group && group.getAttribute("data-status") !== change.status) {
      paint(group, change.status);
    }
  }

  function onEvents(events) {
    if (during !== null) {
      Array.prototype.push.apply(during, events);
    }
    if (!view) {
      return;
    }
    events.forEach(function (event) {
      if (event.data) {
        apply(event.data);
      }
    });
    redrawSoon();
  }

  function setLive(open) {
    if (streaming && !open) {
      closedSince = Date.now();
    }
    streaming = open;
    liveLine.textContent = open
      ? "Live: every change is applied as the server's event stream sends it."
      : "The event stream is not open: the page reads the batch every " +
        POLL_MS / 1000 +
        " s (every " +
        FINISHED_POLL_MS / 1000 +
        " s once it has finished) until it is.";
  }

  /** Read the batch's counts again, soon (a batch larger than the graph: its changes
   *  include tasks the page does not hold). One read at a time; changes heard during it
   *  bring another after it, so the last read follows the last change. */
  function countsSoon() {
    if (countsTimer !== null) {
      countsAgain = true;
      return;
    }
    countsAgain = false;
    countsTimer = window.setTimeout(
      function () {
        Dash.fetchJson("/api/batches/" + encodeURIComponent(batchId))
          .then(function (result) {
            if (result.ok && result.body && view) {
              countsFailures = 0;
              Dash.show(errorLine, "");
              view.counts = result.body.counts;
              view.total = result.body.total;
              view.started = view.started || Boolean(result.body.first_started_at);
              redrawSoon();
            } else {
              countsFailed(Dash.errorText(result));
            }
          })
          .catch(function () {
            countsFailed("The server could not be reached.");
          })
          .then(function () {
            countsTimer = null;
            if (countsAgain) {
              countsSoon();
            }
          });
      },
      Math.min(RELOAD_MS * Math.pow(2, countsFailures), 15000)
    );
  }

  function countsFailed(why) {
    countsFailures += 1;
    countsAgain = true;
    Dash.show(errorLine, why + " The counts shown may be behind; the page tries again.");
  }

  function reloadSoon(ms) {
    if (reloadTimer === null) {
      reloadTimer = window.setTimeout(function () {
        reloadTimer = null;
        load();
      }, ms || RELOAD_MS);
    }
  }

  /** Draw the server's answer: the graph again if its tasks or edges changed, otherwise
   *  only the statuses; then the events heard during the read, past what it included. */
  function present(answer, replay) {
    var before = view;
    view = adopt(answer);
    Dash.show(
      graphNote,
      view.truncated
        ? "The batch has " +
            view.total +
            " tasks: the graph shows the first " +
            view.limit +
            " submitted."
        : ""
    );
    if (before && before.shape === view.shape) {
      view.plan = before.plan;
      view.groups = before.groups;
      view.order.forEach(function (id) {
        if (view.groups[id].getAttribute("data-status") !== view.tasks[id].status) {
          paint(view.groups[id], view.tasks[id].status);
        }
      });
    } else {
      var camera0 = before && userMoved ? { x: camera.x, y: camera.y, k: camera.k } : null;
      drawGraph(view);
      if (camera0) {
        camera = camera0; // a redraw keeps where the reader was looking
        userMoved = true;
        place();
      }
    }
    replay.forEach(function (event) {
      if (event.data && Number(event.id) > answer.events_after) {
        apply(event.data);
      }
    });
    redrawSoon();
  }

  /** Read the whole batch (one read at a time; one asked for meanwhile follows it). */
  function load() {
    if (loading) {
      loadAgain = true;
      return Promise.resolve();
    }
    loading = true;
    loadAgain = false;
    during = [];
    return Dash.fetchJson("/dashboard/batches/" + encodeURIComponent(batchId))
      .then(function (result) {
        var replay = during;
        during = null;
        if (result.status === 404) {
          gone = true; // batch ids are never given again: nothing to wait for
          found.hidden = true;
          missing.hidden = false;
          Dash.show(errorLine, "");
          return;
        }
        if (!result.ok || !result.body) {
          Dash.show(errorLine, Dash.errorText(result) + " The page tries again shortly.");
          reloadSoon(RETRY_MS); // the stream may be open: nothing else would read again
          return;
        }
        heard(Date.parse(result.response.headers.get("Date") || ""));
        Dash.show(errorLine, "");
        missing.hidden = true;
        found.hidden = false;
        present(result.body, replay);
        if (!streamStarted) {
          streamStarted = true;
          closedSince = Date.now();
          liveLine.textContent = "Connecting to the server's event stream\u2026";
          Dash.stream(
            "batch_id=" + encodeURIComponent(batchId),
            String(result.body.events_after),
            onEvents,
            setLive
          );
        }
      })
      .catch(function () {
        during = null;
        Dash.show(errorLine, "The server could not be reached. The page tries again shortly.");
        reloadSoon(RETRY_MS);
      })
      .then(function () {
        loading = false;
        if (loadAgain) {
          load();
        }
      });
  }

  // Running bars grow while the tab shows: the timeline and the critical path are drawn
  // again every second while a task runs (from what the page knows: no request).
  window.setInterval(function () {
    if (view && !document.hidden && view.counts.RUNNING > 0 && Date.now() - timelineDrawn >= 1000) {
      redrawSoon();
    }
  }, 1000);
  // Without a stream (for POLL_MS, not between two of them), or before a first read that
  // failed, read the batch every POLL_MS; every FINISHED_POLL_MS once it has finished.
  var lastPoll = Date.now();
  window.setInterval(function () {
    if (gone || streaming || document.hidden || Date.now() - closedSince < POLL_MS) {
      return;
    }
    var every = view && finished(view) ? FINISHED_POLL_MS : POLL_MS;
    if (Date.now() - lastPoll >= every - 100) {
      lastPoll = Date.now();
      load();
    }
  }, POLL_MS);
  window.addEventListener("resize", function () {
    if (!userMoved) {
      fit();
    }
    redrawSoon();
  });
  load();
})();

/* The dependency graph as inline SVG: layers by topological depth, coloured by status. */
"use strict";

var DashGraph = (function () {
  var SVG = "http://www.w3.org/2000/svg"; // the SVG namespace name, not a fetched URL
  var COLOURS = {
    QUEUED: "#9e9e9e",
    RUNNING: "#1e88e5",
    COMPLETED: "#43a047",
    FAILED: "#e53935",
    UPSTREAM_FAILED: "#fb8c00",
    CANCELLED: "#424242",
  };
  var TEXT_COLOURS = { QUEUED: "#111111", UPSTREAM_FAILED: "#111111" };
  var NODE_W = 170;
  var NODE_H = 40;
  var GAP_X = 70;
  var GAP_Y = 16;
  var PAD = 16;
  var MAX_LABEL = 22;

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (name) {
      node.setAttribute(name, String(attrs[name]));
    });
    return node;
  }

  /** An edge's path: from the right side of one node to the left side of the next. */
  function curve(x1, y1, x2, y2) {
    var mid = (x1 + x2) / 2;
    return "M" + x1 + " " + y1 + "C" + mid + " " + y1 + " " + mid + " " + y2 + " " + x2 + " " + y2;
  }

  function clip(text) {
    return text.length > MAX_LABEL ? text.slice(0, MAX_LABEL - 1) + "\u2026" : text;
  }

  /** Depth of each node: the longest path from a node without dependencies in the graph. */
  function depths(nodes, edges) {
    var depth = {};
    var indegree = {};
    var out = {};
    nodes.forEach(function (n) {
      depth[n.id] = 0;
      indegree[n.id] = 0;
      out[n.id] = [];
    });
    edges.forEach(function (e) {
      if (e[0] in out && e[1] in indegree) {
        out[e[0]].push(e[1]);
        indegree[e[1]] += 1;
      }
    });
    var queue = nodes.filter(function (n) {
      return indegree[n.id] === 0;
    }).map(function (n) {
      return n.id;
    });
    while (queue.length) {
      var id = queue.shift();
      out[id].forEach(function (child) {
        depth[child] = Math.max(depth[child], depth[id] + 1);
        indegree[child] -= 1;
        if (indegree[child] === 0) {
          queue.push(child);
        }
      });
    }
    return depth;
  }

  function layout(nodes, edges) {
    var depth = depths(nodes, edges);
    var layers = [];
    nodes.forEach(function (n) {
      var d = depth[n.id];
      (layers[d] = layers[d] || []).push(n.id);
    });
    var position = {};
    var tallest = 0;
    layers.forEach(function (ids, d) {
      ids.sort();
      tallest = Math.max(tallest, ids.length);
      ids.forEach(function (id, i) {
        position[id] = { x: PAD + d * (NODE_W + GAP_X), y: PAD + i * (NODE_H + GAP_Y) };
      });
    });
    return {
      position: position,
      width: PAD * 2 + Math.max(1, layers.length) * (NODE_W + GAP_X) - GAP_X,
      height: PAD * 2 + Math.max(1, tallest) * (NODE_H + GAP_Y) - GAP_Y,
    };
  }

  function shape(graph) {
    var ids = graph.nodes.map(function (n) {
      return n.id;
    });
    return JSON.stringify([ids, graph.edges]);
  }

  function paint(group, status) {
    group.setAttribute("data-status", status);
    var rect = group.querySelector("rect");
    var texts = group.querySelectorAll("text");
    rect.setAttribute("fill", COLOURS[status] || "#ffffff");
    for (var i = 0; i < texts.length; i += 1) {
      texts[i].setAttribute("fill", TEXT_COLOURS[status] || "#ffffff");
    }
    group.querySelector("title").textContent =
      group.getAttribute("data-task-id") + " (" + status + ")";
  }

  function draw(container, graph, currentId) {
    var plan = layout(graph.nodes, graph.edges);
    var root = svg("svg", {
      width: plan.width,
      height: plan.height,
      viewBox: "0 0 " + plan.width + " " + plan.height,
      role: "img",
      "aria-label": "Dependency graph",
    });
    var defs = svg("defs");
    var marker = svg("marker", {
      id: "arrow",
      viewBox: "0 0 10 10",
      refX: 10,
      refY: 5,
      markerWidth: 7,
      markerHeight: 7,
      orient: "auto-start-reverse",
    });
    marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c959f" }));
    defs.appendChild(marker);
    root.appendChild(defs);

    graph.edges.forEach(function (e) {
      var from = plan.position[e[0]];
      var to = plan.position[e[1]];
      if (!from || !to) {
        return;
      }
      var path = svg("path", {
        class: "edge",
        d: curve(from.x + NODE_W, from.y + NODE_H / 2, to.x, to.y + NODE_H / 2),
        "marker-end": "url(#arrow)",
        "data-from": e[0],
        "data-to": e[1],
      });
      root.appendChild(path);
    });

    graph.nodes.forEach(function (n) {
      var at = plan.position[n.id];
      var group = svg("g", {
        class: "node" + (n.id === currentId ? " current" : ""),
        transform: "translate(" + at.x + "," + at.y + ")",
        tabindex: 0,
        role: "link",
        "data-task-id": n.id,
        "data-status": n.status,
      });
      group.appendChild(svg("title"));
      group.appendChild(svg("rect", { width: NODE_W, height: NODE_H, rx: 5, ry: 5 }));
      var label = svg("text", { x: 8, y: 17 });
      label.textContent = clip(n.id);
      group.appendChild(label);
      var sub = svg("text", { x: 8, y: 32, "font-size": 10 });
      sub.textContent = clip(n.type + " \u00b7 " + n.status);
      sub.setAttribute("class", "node-sub");
      group.appendChild(sub);
      paint(group, n.status);
      function open() {
        window.location.href = Dash.taskUrl(n.id);
      }
      group.addEventListener("click", open);
      group.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          open();
        }
      });
      root.appendChild(group);
    });
    Dash.clear(container);
    container.appendChild(root);
  }

  /** Update statuses in place; redraw only when the set of nodes or edges changed. */
  function render(container, graph, currentId) {
    var key = shape(graph);
    if (container.getAttribute("data-shape") !== key) {
      draw(container, graph, currentId);
      container.setAttribute("data-shape", key);
      return;
    }
    var groups = container.querySelectorAll("g.node");
    var byId = {};
    graph.nodes.forEach(function (n) {
      byId[n.id] = n;
    });
    for (var i = 0; i < groups.length; i += 1) {
      var node = byId[groups[i].getAttribute("data-task-id")];
      if (node && groups[i].getAttribute("data-status") !== node.status) {
        paint(groups[i], node.status);
        var sub = groups[i].querySelector("text.node-sub");
        if (sub) {
          sub.textContent = clip(node.type + " \u00b7 " + node.status);
        }
      }
    }
  }

  return {
    render: render,
    colours: COLOURS,
    textColours: TEXT_COLOURS,
    depths: depths,
    curve: curve,
    svg: svg,
  };
})();

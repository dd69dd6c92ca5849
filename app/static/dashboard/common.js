/* Shared helpers for the dashboard pages. Data only ever reaches the page as text. */
"use strict";

var Dash = (function () {
  /** Build an element; `text` is set with textContent, never parsed as HTML. */
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        if (attrs[name] !== null && attrs[name] !== undefined) {
          node.setAttribute(name, String(attrs[name]));
        }
      });
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
  }

  function show(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }

  function taskUrl(id) {
    return "/tasks/" + encodeURIComponent(id);
  }

  function apiTaskUrl(id) {
    return "/api/tasks/" + encodeURIComponent(id);
  }

  /** Fetch JSON; resolve {ok, status, body, response}; the body is null when not JSON. */
  function fetchJson(url, options) {
    var init = options || {};
    init.headers = init.headers || {};
    init.headers.Accept = "application/json";
    init.credentials = "same-origin";
    return fetch(url, init).then(function (response) {
      return response
        .json()
        .catch(function () {
          return null;
        })
        .then(function (body) {
          return { ok: response.ok, status: response.status, body: body, response: response };
        });
    });
  }

  /** The API's error sentence, or a fallback naming the HTTP status. */
  function errorText(result) {
    if (result.body && typeof result.body.error === "string") {
      return result.body.error;
    }
    return "The server answered " + result.status + ".";
  }

  /** The cursor of the Link rel="next" URL, or null on the last page. */
  function nextCursor(linkHeader) {
    if (!linkHeader) {
      return null;
    }
    var parts = linkHeader.split(",");
    for (var i = 0; i < parts.length; i += 1) {
      var match = /<([^>]*)>\s*;\s*rel="?next"?/.exec(parts[i]);
      if (match) {
        try {
          return new URL(match[1], window.location.href).searchParams.get("cursor");
        } catch (e) {
          return null;
        }
      }
    }
    return null;
  }

  /** Format an ISO time for people, keeping the original in the title. */
  function time(value) {
    if (!value) {
      return "-";
    }
    var date = new Date(value);
    return isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  /** Run `tick` now and then every `ms`, never overlapping; skip while the tab is hidden. */
  function poll(tick, ms) {
    var busy = false;
    function run() {
      if (busy || document.hidden) {
        return;
      }
      busy = true;
      Promise.resolve()
        .then(tick)
        .catch(function () {})
        .then(function () {
          busy = false;
        });
    }
    run();
    return window.setInterval(run, ms);
  }

  return {
    el: el,
    clear: clear,
    show: show,
    taskUrl: taskUrl,
    apiTaskUrl: apiTaskUrl,
    fetchJson: fetchJson,
    errorText: errorText,
    nextCursor: nextCursor,
    time: time,
    poll: poll,
  };
})();

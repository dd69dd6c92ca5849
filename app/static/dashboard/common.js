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

  function apiScheduleUrl(id) {
    return "/api/schedules/" + encodeURIComponent(id);
  }

  function apiQueueUrl(name) {
    return "/api/queues/" + encodeURIComponent(name);
  }

  // With API_TOKEN set, the data routes answer 401 until the page sends the token; it is
  // asked for once and kept for this tab's session only.
  var TOKEN_KEY = "task-scheduler.api-token";
  var TOKEN_CHARS = /^[\x21-\x7e]+$/;
  var asking = null;

  function storedToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function storeToken(token) {
    try {
      if (token) {
        window.sessionStorage.setItem(TOKEN_KEY, token);
      } else {
        window.sessionStorage.removeItem(TOKEN_KEY);
      }
    } catch (e) {
      // Storage disabled: the token lives until the page is left.
    }
  }

  /** Show the token form; resolve once the user has entered a token. One form for all. */
  function askToken(refused) {
    if (asking) {
      return asking;
    }
    var form = document.getElementById("token-form");
    var input = document.getElementById("token-input");
    var note = document.getElementById("token-note");
    show(
      note,
      refused
        ? "The server refused that token. Enter the value of its API_TOKEN setting."
        : "This server needs its API token (its API_TOKEN setting) to show tasks."
    );
    form.hidden = false;
    input.focus();
    asking = new Promise(function (resolve) {
      function submitted(event) {
        event.preventDefault();
        var token = input.value.trim();
        if (!TOKEN_CHARS.test(token)) {
          show(note, "A token is printable ASCII without spaces.");
          return;
        }
        form.removeEventListener("submit", submitted);
        input.value = "";
        form.hidden = true;
        storeToken(token);
        asking = null;
        resolve();
      }
      form.addEventListener("submit", submitted);
    });
    return asking;
  }

  function send(url, options, token) {
    var headers = { Accept: "application/json" };
    Object.keys(options.headers || {}).forEach(function (name) {
      headers[name] = options.headers[name];
    });
    if (token) {
      headers.Authorization = "Bearer " + token;
    }
    var init = { method: options.method || "GET", headers: headers, credentials: "same-origin" };
    if (options.body !== undefined) {
      init.body = options.body;
    }
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

  /** Fetch JSON; resolve {ok, status, body, response}; the body is null when not JSON.
   *  A 401 asks for the API token, then sends the request again with it. */
  function fetchJson(url, options) {
    var init = options || {};
    var token = storedToken();
    return send(url, init, token).then(function (result) {
      if (result.status !== 401) {
        return result;
      }
      if (storedToken() !== token) {
        // Another request was answered a token meanwhile: use it.
        return fetchJson(url, init);
      }
      if (token) {
        storeToken("");
      }
      return askToken(Boolean(token)).then(function () {
        return fetchJson(url, init);
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

  // A run is what the submit, and then each retry, starts: at most max_attempts attempts.
  var ATTEMPTS_NOTE =
    "Attempts started in all; this count never goes down. A run starts at the submit and " +
    "again at each retry, and makes at most max_attempts attempts.";

  /** A task's attempts for people: "2 (up to 1 per run)" after one retry, never "2 / 1". */
  function attempts(task) {
    var text = String(task.attempts);
    return task.max_attempts ? text + " (up to " + task.max_attempts + " per run)" : text;
  }

  /** The batch page's URL: the batch's whole graph. */
  function batchPageUrl(batchId) {
    return "/batches/" + encodeURIComponent(batchId);
  }

  /** The overview's URL listing the tasks of one batch. */
  function batchUrl(batchId) {
    return "/?batch_id=" + encodeURIComponent(batchId);
  }

  // While the server's event stream is open, a page refreshes when a task changes and
  // polls only as a safety net; without one (every stream slot of the worker taken, an
  // older server, the network) it polls as before.
  var SAFETY_POLL_MS = 15000;
  var CHANGE_REFRESH_MS = 500;
  var live = { started: false, open: false, listeners: [], streams: 0 };

  /** Call `tick` when a task changes, at most every CHANGE_REFRESH_MS while the tab shows. */
  function onChanges(tick) {
    var pending = false;
    live.listeners.push(function () {
      if (pending || document.hidden) {
        return;
      }
      pending = true;
      window.setTimeout(function () {
        pending = false;
        Promise.resolve().then(tick).catch(function () {});
      }, CHANGE_REFRESH_MS);
    });
    if (!live.started) {
      live.started = true;
      stream("", null, function () {
        live.listeners.forEach(function (listener) {
          listener();
        });
      }, function (open) {
        live.open = open;
      });
    }
  }

  /** Parse complete server-sent event blocks: [{id, data}], data parsed from JSON. */
  function parseEvents(blocks) {
    var found = [];
    blocks.forEach(function (block) {
      var event = { id: null, data: null };
      block.split("\n").forEach(function (line) {
        if (line.indexOf("id: ") === 0) {
          event.id = line.slice(4);
        } else if (line.indexOf("data: ") === 0) {
          try {
            event.data = JSON.parse(line.slice(6));
          } catch (e) {
            event.data = null;
          }
        }
      });
      if (event.id !== null) {
        found.push(event);
      }
    });
    return found;
  }

  /** Read /api/events?`query` with fetch (the token in its header, never in the URL:
   *  EventSource cannot send one), after event `lastId` (null: from now), and again after
   *  the last event seen whenever the stream ends. `onEvents(events)` gets each chunk's
   *  events ({id, data}) in order; `onOpen(open)` hears when the stream opens and ends. */
  function stream(query, lastId, onEvents, onOpen) {
    var headers = { Accept: "text/event-stream" };
    var token = storedToken();
    var again = 1000;
    var opened = false;
    if (token) {
      headers.Authorization = "Bearer " + token;
    }
    if (lastId) {
      headers["Last-Event-ID"] = lastId;
    }
    var url = "/api/events" + (query ? "?" + query : "");
    fetch(url, { headers: headers, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok || !response.body) {
          // 401: soon again, with the token the page asks for; 503 (every slot of the
          // worker taken, as when pages opened one after another still hold theirs until
          // the server notices they went): after its Retry-After; another refusal: later.
          // The page polls meanwhile.
          var wait = Number(response.headers.get("Retry-After"));
          if (response.status === 401) {
            again = 2000;
          } else if (response.status === 503 && wait > 0) {
            again = Math.min(wait * 1000, SAFETY_POLL_MS);
          } else {
            again = SAFETY_POLL_MS;
          }
          return null;
        }
        opened = true;
        live.streams += 1;
        onOpen(true);
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function read() {
          return reader.read().then(function (chunk) {
            if (chunk.done) {
              return null;
            }
            buffer += decoder.decode(chunk.value, { stream: true });
            var blocks = buffer.split("\n\n");
            buffer = blocks.pop();
            var events = parseEvents(blocks);
            if (events.length) {
              lastId = events[events.length - 1].id;
              try {
                onEvents(events);
              } catch (e) {
                window.console.error(e); // the page's fault: keep the stream
              }
            }
            return read();
          });
        }
        return read();
      })
      .catch(function () {
        again = SAFETY_POLL_MS;
      })
      .then(function () {
        if (opened) {
          live.streams -= 1;
        }
        onOpen(false);
        window.setTimeout(function () {
          stream(query, lastId, onEvents, onOpen);
        }, again);
      });
  }

  /** Run `tick` now and then every `ms`, never overlapping; skip while the tab is hidden,
   *  and while the event stream is open, but for a run every SAFETY_POLL_MS. */
  function poll(tick, ms) {
    var busy = false;
    var last = 0;
    function run() {
      if (busy || document.hidden) {
        return;
      }
      if (live.open && Date.now() - last < SAFETY_POLL_MS) {
        return;
      }
      last = Date.now();
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
    batchUrl: batchUrl,
    batchPageUrl: batchPageUrl,
    attempts: attempts,
    ATTEMPTS_NOTE: ATTEMPTS_NOTE,
    apiTaskUrl: apiTaskUrl,
    apiScheduleUrl: apiScheduleUrl,
    apiQueueUrl: apiQueueUrl,
    fetchJson: fetchJson,
    errorText: errorText,
    nextCursor: nextCursor,
    time: time,
    poll: poll,
    onChanges: onChanges,
    stream: stream,
    streaming: function () {
      return live.streams > 0;
    },
  };
})();

// The registry's live dashboard: the whole system from GET /v1/status, kept current by the
// server-sent events of GET /v1/events, and any past moment from GET /v1/status?at= with the
// transitions around it from GET /v1/history. Plain JavaScript, no framework, no build step:
// the registry embeds this file as it is.
'use strict';

(() => {
  const TOKEN_KEY = 'central-registry.read-token';
  const STATUSES = ['passing', 'warning', 'critical', 'maintenance'];
  // Status is never shown by colour alone: every badge carries a symbol and the word.
  const SYMBOL = { passing: '✓', warning: '▲', critical: '✕', maintenance: '‖' };
  const FEED_LIMIT = 200;
  // How many of the latest changes the feed shows on arrival.
  const FEED_BACKLOG = 30;
  const AROUND_EACH_SIDE = 12;
  const AROUND_WINDOW_MS = 30 * 60 * 1000;
  const AROUND_MAX_SERVICES = 40;
  // Heartbeats append no event: a periodic reload keeps "last heartbeat" current.
  const REFRESH_MS = 15000;
  const PRESERVATION_REFRESH_MS = 1000;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 8000;

  const $ = (id) => document.getElementById(id);
  const el = {
    body: document.body,
    connection: $('connection'),
    notice: $('notice'),
    preservation: $('preservation'),
    tokenForm: $('token-form'),
    token: $('token'),
    forgetToken: $('forget-token'),
    mode: $('mode'),
    scrubber: $('scrubber'),
    rangeStart: $('range-start'),
    moment: $('moment'),
    liveButton: $('live-button'),
    filterName: $('filter-name'),
    filterStatus: $('filter-status'),
    summary: $('summary'),
    serviceList: $('service-list'),
    servicesWhen: $('services-when'),
    around: $('around'),
    aroundWhen: $('around-when'),
    aroundList: $('around-list'),
    feed: $('feed'),
    feedEmpty: $('feed-empty'),
  };

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    // Live system: service name -> Map(instance id -> instance).
    live: new Map(),
    liveIndex: 0,
    loaded: false,
    // Self-preservation as the latest live answer of /v1/status gave it.
    preservation: null,
    // Set while looking at a past moment: {at: Date, services: [...] | null, around: [...] | null,
    // preservation: the mode then | null}.
    viewing: null,
    viewSeq: 0,
    feed: [],
    source: null,
    retryDelay: RETRY_MIN_MS,
    streamRetryDelay: RETRY_MIN_MS,
    retryTimer: null,
    refreshTimer: null,
    historyStart: null,
    scrubbing: false,
    scrubTimer: null,
    renderQueued: false,
  };

  // ---- API access -------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      this.field = field;
    }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, { headers, cache: 'no-store' });
    } catch (err) {
      throw new ApiFailure(0, 'the registry cannot be reached');
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const error = body && body.error ? body.error : {};
      throw new ApiFailure(response.status, error.message || response.statusText || 'error', error.field);
    }
    return body;
  }

  // ---- Live state -------------------------------------------------------------------

  async function connect() {
    clearTimeout(state.retryTimer);
    closeStream();
    if (!state.loaded) setConnection('connecting');
    try {
      const body = await api('/v1/status');
      applySnapshot(body);
      state.retryDelay = RETRY_MIN_MS;
      hideNotice();
      hideTokenForm();
      openStream(Math.max(0, body.index - FEED_BACKLOG));
      scheduleRefresh();
    } catch (err) {
      failed(err);
    }
  }

  function failed(err) {
    closeStream();
    clearTimeout(state.refreshTimer);
    if (err.status === 401) {
      setConnection('unauthorized');
      showNotice(
        state.token
          ? 'The registry refused this token. Enter the read token again.'
          : 'This registry needs a read token to show its data. Enter it below.',
      );
      showTokenForm();
      return;
    }
    const why = err.status ? `HTTP ${err.status}: ${err.message}` : err.message;
    const seconds = Math.round(state.retryDelay / 1000);
    setConnection('unavailable');
    showNotice(`Registry unavailable (${why}), retrying in ${seconds} s…`);
    state.retryTimer = setTimeout(connect, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
  }

  function applySnapshot(body) {
    // An answer older than events already applied would take the page back in time.
    if (state.loaded && body.index < state.liveIndex) return;
    const live = new Map();
    for (const service of body.services || []) {
      const instances = new Map();
      for (const instance of service.instances || []) instances.set(instance.id, instance);
      live.set(service.name, instances);
    }
    state.live = live;
    state.liveIndex = body.index;
    state.loaded = true;
    state.preservation = body.self_preservation || null;
    noteHistoryStart(body);
    queueRender();
  }

  // Self-preservation changes append no event of its own: a held lapse, or a heartbeat
  // that ends one, is the sign to ask for the mode again soon.
  function refreshSoon() {
    scheduleRefresh(PRESERVATION_REFRESH_MS);
  }

  // Events at or before the state shown (the stream starts a little before it, to fill
  // the feed with the latest changes) go to the feed only.
  function applyEvent(event) {
    addToFeed(event);
    if (event.index <= state.liveIndex) return;
    state.liveIndex = event.index;
    let instances = state.live.get(event.service);
    const wasHeld = Boolean(instances && instances.get(event.instance)?.lease_held);
    if (event.reason === 'lease_held' || wasHeld) refreshSoon();
    if (event.kind === 'removed') {
      if (instances) {
        instances.delete(event.instance);
        if (instances.size === 0) state.live.delete(event.service);
      }
    } else {
      if (!instances) {
        instances = new Map();
        state.live.set(event.service, instances);
      }
      instances.set(event.instance, event.snapshot);
    }
    queueRender();
  }

  function addToFeed(event) {
    if (state.feed.some((e) => e.index === event.index)) return;
    state.feed.push(event);
    state.feed.sort((a, b) => b.index - a.index);
    if (state.feed.length > FEED_LIMIT) state.feed.length = FEED_LIMIT;
    queueRender();
  }

  function openStream(since) {
    const url = new URL('/v1/events', window.location.origin);
    url.searchParams.set('since', String(since));
    // EventSource cannot send headers: the API takes the token in the query here.
    if (state.token) url.searchParams.set('token', state.token);
    const source = new EventSource(url);
    state.source = source;
    source.onopen = () => {
      if (state.source !== source) return;
      state.streamRetryDelay = RETRY_MIN_MS;
      setConnection('live');
    };
    source.onmessage = (message) => {
      try {
        applyEvent(JSON.parse(message.data));
      } catch (err) {
        console.error('unreadable event', err);
      }
    };
    // Sent when the events after our start are no longer kept: the data is the whole system.
    source.addEventListener('reset', (message) => {
      try {
        const body = JSON.parse(message.data);
        state.liveIndex = 0;
        applySnapshot(body);
      } catch (err) {
        console.error('unreadable reset', err);
      }
    });
    source.onerror = () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with an error (401, 503, ...): find out which, then retry,
        // waiting longer each time the stream fails again right away.
        closeStream();
        setConnection('reconnecting');
        clearTimeout(state.retryTimer);
        state.retryTimer = setTimeout(connect, state.streamRetryDelay);
        state.streamRetryDelay = Math.min(state.streamRetryDelay * 2, RETRY_MAX_MS);
      } else {
        // The browser reconnects by itself and resumes from the last event id.
        setConnection('reconnecting');
      }
    };
  }

  function closeStream() {
    if (state.source) {
      state.source.close();
      state.source = null;
    }
  }

  function scheduleRefresh(delay = REFRESH_MS) {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(async () => {
      try {
        applySnapshot(await api('/v1/status'));
        scheduleRefresh();
      } catch (err) {
        failed(err);
      }
    }, delay);
  }

  // The kept history's start, for the scrubber's range: every live answer of /v1/status
  // carries it (absent while the registry cannot ask its database: the last one stays).
  function noteHistoryStart(body) {
    const start = body.history_starts_at ? new Date(body.history_starts_at) : null;
    if (start && !Number.isNaN(start.getTime())) state.historyStart = start;
  }

  // ---- Time travel -------------------------------------------------------------------

  async function viewAt(at) {
    if (at.getTime() >= Date.now() - 500) {
      goLive();
      return;
    }
    const seq = ++state.viewSeq;
    state.viewing = { at, services: null, around: null, preservation: null };
    hideNotice();
    setMode();
    updateScrubber();
    queueRender();
    try {
      const body = await api(`/v1/status?at=${encodeURIComponent(at.toISOString())}`);
      if (seq !== state.viewSeq) return;
      state.viewing.services = body.services || [];
      state.viewing.preservation = body.self_preservation || null;
      queueRender();
      const names = new Set(state.viewing.services.map((s) => s.name));
      for (const name of state.live.keys()) names.add(name);
      const around = await loadAround(at, [...names].slice(0, AROUND_MAX_SERVICES));
      if (seq !== state.viewSeq) return;
      state.viewing.around = around;
      queueRender();
    } catch (err) {
      if (seq !== state.viewSeq) return;
      if (err.status === 400) {
        showNotice(`Cannot show ${formatDateTime(at)}: ${err.message}`);
        state.viewing.services = [];
        state.viewing.around = { before: [], after: [] };
        queueRender();
      } else {
        goLive();
        failed(err);
      }
    }
  }

  async function loadAround(at, names) {
    const since = new Date(at.getTime() - AROUND_WINDOW_MS).toISOString();
    const until = new Date(at.getTime() + AROUND_WINDOW_MS).toISOString();
    const answers = await Promise.all(
      names.map((name) =>
        api(`/v1/history?service=${encodeURIComponent(name)}&since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}`)
          .then((body) => body.events || [])
          .catch((err) => {
            if (err.status === 401) throw err;
            return [];
          }),
      ),
    );
    const events = answers.flat().sort((a, b) => a.index - b.index);
    const t = at.getTime();
    const before = events.filter((e) => Date.parse(e.at) <= t).slice(-AROUND_EACH_SIDE);
    const after = events.filter((e) => Date.parse(e.at) > t).slice(0, AROUND_EACH_SIDE);
    return { before, after };
  }

  function goLive() {
    state.viewSeq += 1;
    state.viewing = null;
    setMode();
    updateScrubber();
    queueRender();
  }

  // ---- Rendering ---------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role' || key === 'scope' || key === 'id' || key === 'title' || key === 'datetime') node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(status, extraClass) {
    const known = STATUSES.includes(status) ? status : 'unknown';
    return h(
      'span',
      { class: `badge ${extraClass || ''}`.trim(), 'data-status': known },
      h('span', { class: 'symbol', 'aria-hidden': 'true' }, SYMBOL[known] || '?'),
      ' ',
      h('span', { class: 'label' }, status || 'none'),
    );
  }

  function rollUp(instances) {
    if (instances.length > 0 && instances.every((i) => i.status === 'maintenance')) return 'maintenance';
    if (!instances.some((i) => i.status === 'passing' || i.status === 'warning')) return 'critical';
    if (instances.some((i) => i.status !== 'passing')) return 'warning';
    return 'passing';
  }

  // Services as [{name, status, instances}], sorted by name: live, or the moment viewed.
  function currentServices() {
    if (state.viewing) {
      return (state.viewing.services || []).map((s) => ({
        name: s.name,
        status: s.status,
        instances: [...s.instances].sort((a, b) => a.id.localeCompare(b.id)),
      }));
    }
    return [...state.live.entries()]
      .map(([name, map]) => {
        const instances = [...map.values()].sort((a, b) => a.id.localeCompare(b.id));
        return { name, status: rollUp(instances), instances };
      })
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  function referenceTime() {
    return state.viewing ? state.viewing.at.getTime() : Date.now();
  }

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    setTimeout(() => {
      state.renderQueued = false;
      render();
    }, 0);
  }

  function render() {
    const services = currentServices();
    renderPreservation();
    renderSummary(services);
    renderServices(services);
    renderFeed();
    renderAround();
    tick();
  }

  // The banner: the mode of the moment shown (live, or the past moment's answer).
  function renderPreservation() {
    const mode = state.viewing ? state.viewing.preservation : state.preservation;
    if (!mode || !mode.active) {
      el.preservation.hidden = true;
      el.preservation.replaceChildren();
      return;
    }
    const since = mode.since ? ` since ${formatDateTime(new Date(mode.since))}` : '';
    el.preservation.replaceChildren(
      h('strong', null, `Self-preservation${since}: `),
      `the registry lost sight of many instances at once and suspects its own network. `
        + `Lease lapses are held, statuses kept (${mode.held} held).`,
    );
    el.preservation.hidden = false;
  }

  function renderSummary(services) {
    const counts = { passing: 0, warning: 0, critical: 0, maintenance: 0 };
    let total = 0;
    for (const service of services) {
      for (const instance of service.instances) {
        counts[instance.status] = (counts[instance.status] || 0) + 1;
        total += 1;
      }
    }
    const items = [
      h('li', { class: 'stat' }, h('span', { class: 'number' }, services.length), h('span', { class: 'what' }, services.length === 1 ? 'service' : 'services')),
      h('li', { class: 'stat' }, h('span', { class: 'number' }, total), h('span', { class: 'what' }, total === 1 ? 'instance' : 'instances')),
      ...STATUSES.map((status) =>
        h(
          'li',
          { class: 'stat', 'data-status': status, 'data-count': counts[status] },
          h('span', { class: 'number' }, counts[status]),
          h('span', { class: 'what' }, h('span', { 'aria-hidden': 'true' }, `${SYMBOL[status]} `), status),
        ),
      ),
    ];
    el.summary.replaceChildren(...items);
    // A tab in the background still tells how many instances are down.
    const when = state.viewing ? ` at ${formatDateTime(state.viewing.at)}` : '';
    document.title = `${counts.critical ? `(${counts.critical} critical) ` : ''}central-registry${when}`;
  }

  function matchesName(name) {
    const wanted = el.filterName.value.trim().toLowerCase();
    return !wanted || name.toLowerCase().includes(wanted);
  }

  function renderServices(services) {
    const loading = state.viewing ? state.viewing.services === null : !state.loaded;
    el.serviceList.setAttribute('aria-busy', loading ? 'true' : 'false');
    el.servicesWhen.textContent = state.viewing ? `at ${formatDateTime(state.viewing.at)}` : 'now';
    if (loading) {
      if (!el.serviceList.querySelector('.service')) {
        const waiting = {
          unauthorized: 'The services appear once the registry accepts the read token.',
          unavailable: 'The services appear once the registry answers.',
        };
        const text = (!state.viewing && waiting[el.body.dataset.connection]) || 'Loading…';
        el.serviceList.replaceChildren(h('p', { class: 'empty' }, text));
      }
      return;
    }
    const statusFilter = el.filterStatus.value;
    const shown = [];
    for (const service of services) {
      if (!matchesName(service.name)) continue;
      const instances = statusFilter ? service.instances.filter((i) => i.status === statusFilter) : service.instances;
      if (instances.length === 0 && statusFilter) continue;
      shown.push(renderService(service, instances));
    }
    if (shown.length === 0) {
      const message = services.length === 0
        ? (state.viewing ? 'No instance was registered at that moment.' : 'No service is registered yet.')
        : 'No service matches the filters.';
      el.serviceList.replaceChildren(h('p', { class: 'empty' }, message));
      return;
    }
    el.serviceList.replaceChildren(...shown);
  }

  function renderService(service, instances) {
    const headingId = `service-${service.name}`;
    const hidden = service.instances.length - instances.length;
    const rows = instances.map(renderInstance);
    return h(
      'article',
      { class: 'service', 'data-service': service.name, 'data-status': service.status, 'aria-labelledby': headingId },
      h(
        'header',
        { class: 'service-head' },
        h('h3', { id: headingId }, service.name),
        badge(service.status, 'service-status'),
        h('span', { class: 'count' }, `${service.instances.length} ${service.instances.length === 1 ? 'instance' : 'instances'}${hidden ? `, ${hidden} hidden by the filter` : ''}`),
      ),
      h('div', { class: 'table-wrap' }, renderTable(service.name, rows)),
    );
  }

  function renderTable(name, rows) {
    const columns = ['Instance', 'Status', 'URL', 'Age', 'Last heartbeat', 'Last check'];
    return h(
      'table',
      { class: 'instances' },
      h('caption', { class: 'visually-hidden' }, `Instances of ${name}`),
      h('thead', null, h('tr', null, ...columns.map((label) => h('th', { scope: 'col' }, label)))),
      h('tbody', null, ...rows),
    );
  }

  function renderInstance(instance) {
    let heartbeat;
    if (!instance.lease_expires_at) {
      heartbeat = h('span', { class: 'muted' }, 'no lease');
    } else {
      heartbeat = h(
        'span',
        null,
        relTime(instance.last_heartbeat_at, 'ago'),
        h('span', { class: 'sub' }, ' · lease ', relTime(instance.lease_expires_at, 'lease')),
        instance.lease_held ? h('span', { class: 'held' }, ' · lapse held') : null,
      );
    }
    let check;
    if (!instance.check) {
      check = h('span', { class: 'muted' }, 'no check');
    } else if (!instance.last_check) {
      check = h('span', { class: 'muted' }, `${instance.check.http || `tcp ${instance.check.tcp}`}: not run yet`);
    } else {
      const last = instance.last_check;
      check = h(
        'span',
        { class: 'check', 'data-status': last.status },
        h('span', { 'aria-hidden': 'true' }, `${SYMBOL[last.status] || '?'} `),
        `${last.status}: ${last.detail}`,
        h('span', { class: 'sub' }, ' · ', relTime(last.at, 'ago')),
      );
    }
    return h(
      'tr',
      { class: 'instance', 'data-instance': instance.id, 'data-status': instance.status },
      h('th', { scope: 'row', 'data-label': 'Instance' }, h('div', { class: 'instance-id' }, instance.id)),
      cell('Status', badge(instance.status, 'instance-status'), h('span', { class: 'sub since' }, 'for ', relTime(instance.status_changed_at, 'for'))),
      cell('URL', h('code', { class: 'url' }, ...breakable(instance.url))),
      cell('Age', relTime(instance.registered_at, 'for')),
      cell('Last heartbeat', heartbeat),
      cell('Last check', check),
    );
  }

  // A URL that may wrap after the slashes of its path rather than anywhere.
  function breakable(text) {
    return text.split(/(?<=[^:/]\/)/).flatMap((part, i) => (i === 0 ? [part] : [document.createElement('wbr'), part]));
  }

  // One table cell; its content in one box so that the phone layout can put the column's
  // label beside it.
  function cell(label, ...content) {
    return h('td', { 'data-label': label }, h('div', null, ...content));
  }

  function renderEvent(event, extraClass) {
    const move = event.kind === 'removed'
      ? [badge(event.from, 'small'), ' → removed']
      : event.from && event.from !== event.to
        ? [badge(event.from, 'small'), ' → ', badge(event.to, 'small')]
        : [badge(event.to, 'small')];
    return h(
      'li',
      { class: `event ${extraClass || ''}`.trim(), 'data-index': event.index, 'data-service': event.service, 'data-instance': event.instance, 'data-to': event.to || 'removed' },
      h('time', { datetime: event.at, title: formatDateTime(new Date(event.at)) }, formatTime(new Date(event.at))),
      h('span', { class: 'who' }, h('strong', null, event.service), ' / ', event.instance),
      h('span', { class: 'move' }, ...move),
      h('span', { class: 'reason' }, event.reason.replace(/_/g, ' ')),
    );
  }

  function renderFeed() {
    const events = state.feed.filter((e) => matchesName(e.service));
    // The feed is a live region: only new items are added, so a screen reader announces
    // each change once.
    const present = new Set([...el.feed.children].map((li) => li.dataset.index));
    const wanted = new Set(events.map((e) => String(e.index)));
    for (const li of [...el.feed.children]) {
      if (!wanted.has(li.dataset.index)) li.remove();
    }
    let previous = null;
    for (const event of events) {
      let li = el.feed.querySelector(`li[data-index="${event.index}"]`);
      if (!present.has(String(event.index))) {
        li = renderEvent(event);
        if (previous) previous.after(li);
        else el.feed.prepend(li);
      }
      previous = li;
    }
    el.feedEmpty.hidden = events.length > 0;
    el.feedEmpty.textContent = state.feed.length > 0 ? 'No change matches the filter.' : 'No change yet: changes appear here as they happen.';
  }

  function renderAround() {
    const viewing = state.viewing;
    el.around.hidden = !viewing;
    if (!viewing) return;
    el.aroundWhen.textContent = formatDateTime(viewing.at);
    if (!viewing.around) {
      el.aroundList.replaceChildren(h('li', { class: 'empty' }, 'Loading…'));
      return;
    }
    const keep = (e) => matchesName(e.service);
    const before = viewing.around.before.filter(keep);
    const after = viewing.around.after.filter(keep);
    const marker = h('li', { class: 'marker', 'aria-current': 'time' }, h('span', { 'aria-hidden': 'true' }, '▶ '), `viewing ${formatDateTime(viewing.at)}`);
    const items = [
      ...after.slice().reverse().map((e) => renderEvent(e, 'after')),
      marker,
      ...before.slice().reverse().map((e) => renderEvent(e, 'before')),
    ];
    if (before.length === 0 && after.length === 0) {
      items.push(h('li', { class: 'empty' }, `No transition within ${AROUND_WINDOW_MS / 60000} minutes of that moment.`));
    }
    el.aroundList.replaceChildren(...items);
  }

  // ---- Times -------------------------------------------------------------------------

  // A <time> that tick() keeps current: "ago" (3s ago), "for" (3m 2s), "lease" (in 4s / lapsed 2s ago).
  function relTime(iso, style) {
    return h('time', { class: 'rel', datetime: iso, 'data-style': style, title: formatDateTime(new Date(iso)) }, '');
  }

  function duration(ms) {
    let s = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const hrs = Math.floor(s / 3600);
    s -= hrs * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${d}d ${hrs}h`;
    if (hrs) return `${hrs}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function relText(iso, style, now) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return '—';
    if (style === 'for') return duration(now - t);
    if (style === 'lease') return t >= now ? `ends in ${duration(t - now)}` : `lapsed ${duration(now - t)} ago`;
    return t > now ? 'just now' : `${duration(now - t)} ago`;
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function formatTime(date) {
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function formatDate(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  }

  function formatDateTime(date) {
    return `${formatDate(date)} ${formatTime(date)}`;
  }

  function toLocalInput(date) {
    return `${formatDate(date)}T${formatTime(date)}`;
  }

  // Once a second: relative times, the scrubber's end (now) while live.
  function tick() {
    const now = referenceTime();
    for (const node of document.querySelectorAll('time.rel')) {
      node.textContent = relText(node.getAttribute('datetime'), node.dataset.style, now);
    }
    if (!state.viewing && !state.scrubbing) updateScrubber();
  }

  // ---- Controls ----------------------------------------------------------------------

  function earliestKnown() {
    if (state.historyStart) return state.historyStart.getTime();
    let earliest = Date.now() - 60 * 60 * 1000;
    for (const instances of state.live.values()) {
      for (const instance of instances.values()) earliest = Math.min(earliest, Date.parse(instance.registered_at));
    }
    return earliest;
  }

  function updateScrubber() {
    // Whole seconds inside the kept history: rounding down could ask for a moment before it.
    const start = Math.ceil(earliestKnown() / 1000);
    const end = Math.ceil(Date.now() / 1000);
    el.scrubber.min = String(start);
    el.scrubber.max = String(end);
    el.rangeStart.textContent = formatDateTime(new Date(start * 1000));
    el.moment.min = toLocalInput(new Date(start * 1000));
    el.moment.max = toLocalInput(new Date(end * 1000));
    if (state.scrubbing) return;
    if (state.viewing) {
      el.scrubber.value = String(Math.round(state.viewing.at.getTime() / 1000));
      el.scrubber.setAttribute('aria-valuetext', formatDateTime(state.viewing.at));
    } else {
      el.scrubber.value = String(end);
      el.scrubber.setAttribute('aria-valuetext', 'now (live)');
      if (document.activeElement !== el.moment) el.moment.value = '';
    }
  }

  function setMode() {
    const viewing = state.viewing;
    el.body.dataset.mode = viewing ? 'past' : 'live';
    el.mode.dataset.mode = viewing ? 'past' : 'live';
    el.mode.querySelector('.icon').textContent = viewing ? '◷' : '●';
    el.mode.querySelector('.text').textContent = viewing ? `Viewing ${formatDateTime(viewing.at)}` : 'Live';
    el.liveButton.disabled = !viewing;
    if (viewing && document.activeElement !== el.moment) el.moment.value = toLocalInput(viewing.at);
    if (viewing) el.scrubber.setAttribute('aria-valuetext', formatDateTime(viewing.at));
  }

  const CONNECTION = {
    connecting: ['◌', 'Connecting…'],
    live: ['●', 'Connected: live updates'],
    reconnecting: ['◌', 'Connection lost: reconnecting…'],
    unavailable: ['✕', 'Registry unavailable'],
    unauthorized: ['⚠', 'Read token needed'],
  };

  function setConnection(name) {
    const [icon, text] = CONNECTION[name];
    el.body.dataset.connection = name;
    el.connection.dataset.state = name;
    el.connection.querySelector('.icon').textContent = icon;
    el.connection.querySelector('.text').textContent = text;
    queueRender();
  }

  function showNotice(text) {
    el.notice.textContent = text;
    el.notice.hidden = false;
  }

  function hideNotice() {
    el.notice.hidden = true;
    el.notice.textContent = '';
  }

  function showTokenForm() {
    const wasHidden = el.tokenForm.hidden;
    el.tokenForm.hidden = false;
    el.forgetToken.hidden = !state.token;
    if (wasHidden) el.token.focus();
  }

  function hideTokenForm() {
    el.tokenForm.hidden = true;
  }

  el.tokenForm.addEventListener('submit', (submit) => {
    submit.preventDefault();
    state.token = el.token.value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    el.token.value = '';
    connect();
  });

  el.forgetToken.addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    el.forgetToken.hidden = true;
  });

  el.scrubber.addEventListener('input', () => {
    state.scrubbing = true;
    const at = new Date(Number(el.scrubber.value) * 1000);
    el.moment.value = toLocalInput(at);
    el.scrubber.setAttribute('aria-valuetext', formatDateTime(at));
    clearTimeout(state.scrubTimer);
    // Load once the thumb rests a moment, not for every pixel it passes.
    state.scrubTimer = setTimeout(() => {
      state.scrubbing = false;
      viewAt(at);
    }, 250);
  });

  el.moment.addEventListener('change', () => {
    if (!el.moment.value) return;
    const at = new Date(el.moment.value);
    if (!Number.isNaN(at.getTime())) viewAt(at);
  });

  el.liveButton.addEventListener('click', goLive);
  el.filterName.addEventListener('input', queueRender);
  el.filterStatus.addEventListener('change', queueRender);

  setInterval(tick, 1000);
  setMode();
  connect();
})();

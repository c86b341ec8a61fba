// The registry's live dashboard, built to stay quick at a million instances: the system's
// summary from GET /v1/status?summary=true, one page of services from
// GET /v1/status?limit=&cursor=&name= (searched on the server), both kept current by the
// server-sent events of GET /v1/events, and any past moment from the same reads with ?at=,
// with the transitions around it from GET /v1/history. Plain JavaScript, no framework, no
// build step: the registry embeds this file as it is.
'use strict';

(() => {
  const TOKEN_KEY = 'central-registry.read-token';
  const STATUSES = ['passing', 'warning', 'critical', 'maintenance'];
  // Status is never shown by colour alone: every badge carries a symbol and the word.
  const SYMBOL = { passing: '✓', warning: '▲', critical: '✕', maintenance: '‖' };
  // Services per page of the list.
  const PAGE_SIZE = 50;
  // What the server's name filter accepts (anything else could never match a name).
  const NAME_SEARCH = /^[a-z0-9-]{1,63}$/;
  // Typing pause before a search goes to the server.
  const SEARCH_DEBOUNCE_MS = 300;
  // The summary is read again at most this often while events arrive (see summaryChanged).
  const SUMMARY_EVERY_MS = 1000;
  // Events kept to replay onto a page answered before them (see applyPage).
  const RECENT_LIMIT = 2000;
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
    filterNameHelp: $('filter-name-help'),
    filterStatus: $('filter-status'),
    summary: $('summary'),
    serviceSummary: $('service-summary'),
    critical: $('critical'),
    criticalCount: $('critical-count'),
    criticalList: $('critical-list'),
    criticalMore: $('critical-more'),
    serviceList: $('service-list'),
    servicesWhen: $('services-when'),
    pagePrevious: $('page-previous'),
    pageNext: $('page-next'),
    pageIndicator: $('page-indicator'),
    around: $('around'),
    aroundWhen: $('around-when'),
    aroundList: $('around-list'),
    feed: $('feed'),
    feedEmpty: $('feed-empty'),
  };

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    // The page of services shown (live, or of the moment viewed): see pageFrom.
    page: null,
    pageSeq: 0,
    // Where the page shown starts: the cursor that answered it (null: the first page),
    // the last service name of the page before it (the name the cursor stands for, kept
    // to tell whether a new service belongs on this page), the positions of the pages
    // before it (for Previous), and its number.
    position: { cursor: null, after: null, before: [], number: 1 },
    // The server-side search applied: '' for none.
    search: '',
    searchTimer: null,
    // The summary shown (live, or of the moment viewed), and the last one rendered.
    summary: null,
    summaryShown: null,
    summaryTimer: null,
    summaryInFlight: false,
    summaryDirty: false,
    summaryAskedAt: 0,
    // The highest event index seen on the stream.
    eventIndex: 0,
    // The latest events, oldest first (see applyPage).
    recent: [],
    // Service instances whose blocks were rendered: a counter that moves on every change.
    version: 0,
    loaded: false,
    // A read of the page shown is under way.
    loading: false,
    // Self-preservation as the latest live answer gave it.
    preservation: null,
    // Set while looking at a past moment: {at: Date, around: [...] | null, preservation}.
    viewing: null,
    viewSeq: 0,
    feed: [],
    feedDirty: true,
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

  // GET /v1/status?summary=true, now or at the moment viewed.
  function summaryPath(at) {
    const query = new URLSearchParams({ summary: 'true' });
    if (at) query.set('at', at.toISOString());
    return `/v1/status?${query}`;
  }

  // GET /v1/status for the page at the current position and search, now or at `at`.
  function pagePath(at) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (state.position.cursor) query.set('cursor', state.position.cursor);
    if (state.search) query.set('name', state.search);
    if (at) query.set('at', at.toISOString());
    return `/v1/status?${query}`;
  }

  // ---- The page of services ------------------------------------------------------------

  // A service of the page: its instances by id, and the version its block is rendered for.
  function serviceFrom(answer, old) {
    const instances = [...(answer.instances || [])].sort((a, b) => a.id.localeCompare(b.id));
    const json = JSON.stringify([answer.status, instances]);
    // Unchanged since the last answer: the same object, so its block stays as it is.
    if (old && old.json === json) return old;
    return {
      name: answer.name,
      status: answer.status,
      instances: new Map(instances.map((i) => [i.id, i])),
      json,
      version: ++state.version,
    };
  }

  // The page of an answer: its services in name order, where it ends, what comes next.
  function pageFrom(body, at, old) {
    const services = new Map();
    for (const answer of body.services || []) {
      services.set(answer.name, serviceFrom(answer, old && old.services.get(answer.name)));
    }
    const names = [...services.keys()];
    return {
      at,
      index: body.index,
      services,
      // The names this page covers: after position.after, up to `last` when a page follows.
      last: names.length ? names[names.length - 1] : null,
      nextCursor: body.next_cursor || null,
    };
  }

  // A page answer replaces the page shown. The services whose content did not change keep
  // their blocks (renderList compares versions), so a reload redraws only what moved.
  function applyPage(body, at) {
    const old = state.page && state.page.at === at ? state.page : null;
    const page = pageFrom(body, at, old);
    state.page = page;
    if (!at) {
      // Events the stream delivered after the moment of this answer: applied again, as
      // the answer does not hold them yet.
      for (const event of state.recent) {
        if (event.index > page.index) applyToPage(event);
      }
    }
    state.loaded = true;
    queueRender();
  }

  // Whether a service not on the page belongs on it: its name falls in the page's range
  // and matches the search.
  function belongsOnPage(name) {
    const page = state.page;
    if (!page || page.at) return false;
    if (state.search && !name.includes(state.search)) return false;
    if (state.position.after !== null && name <= state.position.after) return false;
    if (page.nextCursor && page.last !== null && name > page.last) return false;
    return true;
  }

  // One event onto the live page: only the service it names changes (and only if that
  // service is on the page, or belongs on it).
  function applyToPage(event) {
    const page = state.page;
    if (!page || page.at || event.index <= page.index) return;
    let service = page.services.get(event.service);
    if (event.kind === 'removed') {
      if (!service) return;
      service.instances.delete(event.instance);
      if (service.instances.size === 0) {
        page.services.delete(event.service);
        return;
      }
    } else if (event.kind === 'registered' || event.kind === 'updated' || event.kind === 'status') {
      if (!service) {
        // A service the page read did not hold is new only if this registers it.
        if (event.kind !== 'registered' || !belongsOnPage(event.service)) return;
        service = { name: event.service, status: 'passing', instances: new Map() };
        page.services.set(event.service, service);
        // Name order, as the server answers.
        page.services = new Map([...page.services.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
      }
      service.instances.set(event.instance, event.snapshot);
    } else {
      return;
    }
    const instances = [...service.instances.values()].sort((a, b) => a.id.localeCompare(b.id));
    service.instances = new Map(instances.map((i) => [i.id, i]));
    service.status = rollUp(instances);
    service.json = null;
    service.version = ++state.version;
  }

  // ---- The summary ---------------------------------------------------------------------

  function applySummary(body, at) {
    // An older answer than the one shown (a slower request) would take the counts back.
    if (!at && state.summary && !state.summary.at && body.index < state.summary.index) return;
    state.summary = { ...body, at };
    if (!at) {
      state.preservation = body.self_preservation || null;
      noteHistoryStart(body);
    }
    queueRender();
  }

  // The live summary after a change. Events alone cannot keep it: the services' rolled-up
  // statuses need every instance of each service, and the critical list the instances of
  // the whole system, neither of which the page holds. The registry keeps the summary's
  // counts as it applies each change, so reading it costs the same at any size (a hundred
  // critical instances at most). So the page reads it again, at once after a quiet time,
  // then at most once every SUMMARY_EVERY_MS while events keep coming: a burst of a
  // hundred thousand lapses costs one small request a second, not one per event, and the
  // last read comes after the last event.
  function summaryChanged() {
    if (state.viewing) return;
    if (state.summaryInFlight || state.summaryTimer) {
      state.summaryDirty = true;
      return;
    }
    const wait = Math.max(0, state.summaryAskedAt + SUMMARY_EVERY_MS - Date.now());
    state.summaryTimer = setTimeout(readSummary, wait);
  }

  async function readSummary() {
    state.summaryTimer = null;
    state.summaryInFlight = true;
    state.summaryDirty = false;
    state.summaryAskedAt = Date.now();
    let stale = false;
    try {
      const body = await api(summaryPath(null));
      if (!state.viewing) applySummary(body, null);
      stale = body.index < state.eventIndex;
    } catch (err) {
      // A refused token is the page's business; an outage shows on the stream itself.
      if (err.status === 401) failed(err);
      return;
    } finally {
      state.summaryInFlight = false;
    }
    if (state.summaryDirty || stale) summaryChanged();
  }

  // ---- Live state -------------------------------------------------------------------

  // Reads the summary and the page of the moment shown (live unless viewing).
  async function loadShown() {
    const at = state.viewing ? state.viewing.at : null;
    const seq = ++state.pageSeq;
    state.loading = true;
    let summary;
    let page;
    try {
      [summary, page] = await Promise.all([api(summaryPath(at)), api(pagePath(at))]);
    } finally {
      if (seq === state.pageSeq) state.loading = false;
    }
    // A newer request (another page, search or moment) answers instead.
    if (seq !== state.pageSeq) return { summary, page, superseded: true };
    applySummary(summary, at);
    applyPage(page, at);
    if (at) state.viewing.preservation = summary.self_preservation || null;
    return { summary, page };
  }

  async function connect() {
    clearTimeout(state.retryTimer);
    closeStream();
    if (!state.loaded) setConnection('connecting');
    try {
      // The live summary tells that the registry answers (and takes the token), also while
      // a past moment is shown.
      const live = state.viewing ? await api(summaryPath(null)) : (await loadShown()).summary;
      state.preservation = live.self_preservation || null;
      noteHistoryStart(live);
      state.retryDelay = RETRY_MIN_MS;
      hideNotice();
      hideTokenForm();
      // The page and summary hold every change up to their index: the stream starts a
      // little before it, to fill the feed with the latest changes.
      openStream(Math.max(0, live.index - FEED_BACKLOG));
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
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
  }

  // Self-preservation changes append no event of its own: a held lapse, or a heartbeat
  // that ends one, is the sign to ask for the mode again soon.
  function refreshSoon() {
    scheduleRefresh(PRESERVATION_REFRESH_MS);
  }

  // One event from the stream. It goes to the feed; it changes the block of its service
  // when that service is on the page (nothing else in the list); and it makes the summary
  // read again (summaryChanged). A service not on the page costs no rendering but the
  // counts'.
  function applyEvent(event) {
    addToFeed(event);
    if (event.index <= state.eventIndex) return;
    state.eventIndex = event.index;
    state.recent.push(event);
    if (state.recent.length > RECENT_LIMIT) state.recent.splice(0, state.recent.length - RECENT_LIMIT);
    const shown = state.page && !state.page.at ? state.page.services.get(event.service) : null;
    const wasHeld = Boolean(shown && shown.instances.get(event.instance)?.lease_held);
    if (event.reason === 'lease_held' || wasHeld) refreshSoon();
    applyToPage(event);
    summaryChanged();
    queueRender();
  }

  function addToFeed(event) {
    if (state.feed.some((e) => e.index === event.index)) return;
    state.feed.push(event);
    state.feed.sort((a, b) => b.index - a.index);
    if (state.feed.length > FEED_LIMIT) state.feed.length = FEED_LIMIT;
    state.feedDirty = true;
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
    // Sent when the events after our start are no longer kept (its data is the whole
    // system): the page and the summary are read again instead, at their size.
    source.addEventListener('reset', (message) => {
      try {
        const body = JSON.parse(message.data);
        state.eventIndex = body.index;
        state.recent = [];
      } catch (err) {
        console.error('unreadable reset', err);
      }
      scheduleRefresh(0);
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

  // Reads the summary and the page shown again (heartbeat times, self-preservation).
  function scheduleRefresh(delay = REFRESH_MS) {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(async () => {
      try {
        if (!state.viewing) await loadShown();
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

  // ---- Paging and search -------------------------------------------------------------

  // Shows the page at the current position (after Next, Previous or a new search).
  async function showPosition() {
    el.serviceList.setAttribute('aria-busy', 'true');
    try {
      const shown = await loadShown();
      const viewing = state.viewing;
      if (viewing && !shown.superseded) {
        // The transitions around the moment viewed, of the services now shown.
        const seq = state.viewSeq;
        const names = [...state.page.services.keys()].slice(0, AROUND_MAX_SERVICES);
        const around = await loadAround(viewing.at, names);
        if (seq === state.viewSeq) {
          viewing.around = around;
          queueRender();
        }
      }
    } catch (err) {
      if (state.viewing && err.status === 400) {
        showNotice(`Cannot show ${formatDateTime(state.viewing.at)}: ${err.message}`);
      } else {
        failed(err);
      }
    }
  }

  function nextPage() {
    const page = state.page;
    if (!page || !page.nextCursor) return;
    const position = state.position;
    state.position = {
      cursor: page.nextCursor,
      after: page.last,
      before: [...position.before, { cursor: position.cursor, after: position.after }],
      number: position.number + 1,
    };
    showPosition();
  }

  function previousPage() {
    const position = state.position;
    if (position.before.length === 0) return;
    const back = position.before[position.before.length - 1];
    state.position = { ...back, before: position.before.slice(0, -1), number: position.number - 1 };
    showPosition();
  }

  // The search box: lower case (names are), sent once typing pauses, from the first page.
  function searchTyped() {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => {
      const wanted = el.filterName.value.trim().toLowerCase();
      const possible = wanted === '' || NAME_SEARCH.test(wanted);
      el.filterName.setAttribute('aria-invalid', possible ? 'false' : 'true');
      el.filterNameHelp.textContent = possible
        ? 'Searched on the server: part of a name.'
        : 'A service name holds only letters, digits and "-": nothing can match.';
      state.feedDirty = true;
      if (!possible) {
        // Nothing to ask the server: no name matches.
        state.search = wanted;
        state.pageSeq += 1;
        state.position = { cursor: null, after: null, before: [], number: 1 };
        state.page = { at: state.viewing ? state.viewing.at : null, index: 0, services: new Map(), last: null, nextCursor: null, impossible: true };
        queueRender();
        return;
      }
      if (wanted === state.search && !(state.page && state.page.impossible)) return;
      state.search = wanted;
      state.position = { cursor: null, after: null, before: [], number: 1 };
      showPosition();
    }, SEARCH_DEBOUNCE_MS);
  }

  // ---- Time travel -------------------------------------------------------------------

  async function viewAt(at) {
    if (at.getTime() >= Date.now() - 500) {
      goLive();
      return;
    }
    const seq = ++state.viewSeq;
    state.viewing = { at, around: null, preservation: null };
    hideNotice();
    setMode();
    updateScrubber();
    queueRender();
    try {
      const shown = await loadShown();
      if (seq !== state.viewSeq || shown.superseded) return;
      const names = [...state.page.services.keys()];
      const around = await loadAround(at, names.slice(0, AROUND_MAX_SERVICES));
      if (seq !== state.viewSeq) return;
      state.viewing.around = around;
      queueRender();
    } catch (err) {
      if (seq !== state.viewSeq) return;
      if (err.status === 400) {
        showNotice(`Cannot show ${formatDateTime(at)}: ${err.message}`);
        state.page = { at, index: 0, services: new Map(), last: null, nextCursor: null };
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
    const wasViewing = Boolean(state.viewing);
    state.viewSeq += 1;
    state.viewing = null;
    setMode();
    updateScrubber();
    queueRender();
    if (wasViewing) showPosition();
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

  function referenceTime() {
    return state.viewing ? state.viewing.at.getTime() : Date.now();
  }

  // Changes are drawn together once the events that arrived together are applied.
  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    setTimeout(() => {
      state.renderQueued = false;
      render();
    }, 0);
  }

  // Each part redraws only what changed: the summary when a new one was read, a service's
  // block when its version moved, the feed's new items.
  function render() {
    renderPreservation();
    renderSummary();
    renderList();
    renderPager();
    if (state.feedDirty) {
      state.feedDirty = false;
      renderFeed();
    }
    renderAround();
  }

  // The banner: the mode of the moment shown (live, or the past moment's answer).
  function renderPreservation() {
    const mode = state.viewing ? state.viewing.preservation : state.preservation;
    if (!mode || !mode.active) {
      if (!el.preservation.hidden) {
        el.preservation.hidden = true;
        el.preservation.replaceChildren();
      }
      return;
    }
    const since = mode.since ? ` since ${formatDateTime(new Date(mode.since))}` : '';
    const text = `Self-preservation${since}: `;
    const rest = `the registry lost sight of many instances at once and suspects its own network. `
      + `Lease lapses are held, statuses kept (${mode.held} held).`;
    if (el.preservation.textContent === text + rest && !el.preservation.hidden) return;
    el.preservation.replaceChildren(h('strong', null, text), rest);
    el.preservation.hidden = false;
  }

  function stat(key, number, what, status) {
    return h(
      'li',
      { class: 'stat', 'data-stat': key, 'data-status': status, 'data-count': number },
      h('span', { class: 'number' }, number),
      h('span', { class: 'what' }, status ? h('span', { 'aria-hidden': 'true' }, `${SYMBOL[status]} `) : null, what),
    );
  }

  // The summary of the moment shown: instances and services per status, and the critical
  // instances first.
  function renderSummary() {
    const summary = state.summary;
    if (summary === state.summaryShown) return;
    state.summaryShown = summary;
    if (!summary) {
      el.summary.replaceChildren();
      el.serviceSummary.replaceChildren();
      el.critical.hidden = true;
      return;
    }
    const instances = summary.instances || {};
    const services = summary.services || {};
    el.summary.replaceChildren(
      stat('services', services.total || 0, services.total === 1 ? 'service' : 'services'),
      stat('instances', instances.total || 0, instances.total === 1 ? 'instance' : 'instances'),
      ...STATUSES.map((status) => stat(status, instances[status] || 0, status, status)),
    );
    el.serviceSummary.replaceChildren(
      h('li', { class: 'label' }, 'Services:'),
      ...STATUSES.map((status) =>
        h(
          'li',
          { class: 'service-count', 'data-status': status, 'data-count': services[status] || 0 },
          badge(status, 'small'),
          ` ${services[status] || 0}`,
        ),
      ),
    );
    const critical = summary.critical || [];
    const total = summary.critical_total || 0;
    el.critical.hidden = total === 0;
    el.criticalCount.textContent = `(${total})`;
    el.criticalList.replaceChildren(
      ...critical.map((instance) =>
        h(
          'li',
          { 'data-service': instance.service, 'data-instance': instance.id },
          badge('critical', 'small'),
          ' ',
          h('strong', null, instance.service),
          ' / ',
          h('span', { class: 'instance-id' }, instance.id),
          ' ',
          h('code', { class: 'url' }, ...breakable(instance.url)),
          h('span', { class: 'sub' }, ' · for ', relTime(instance.status_changed_at, 'for')),
        ),
      ),
    );
    el.criticalMore.hidden = total <= critical.length;
    el.criticalMore.textContent = `${total - critical.length} more not listed: search for a service to see its instances.`;
    fillTimes(el.criticalList);
    // A tab in the background still tells how many instances are down.
    const when = state.viewing ? ` at ${formatDateTime(state.viewing.at)}` : '';
    const down = instances.critical || 0;
    document.title = `${down ? `(${down} critical) ` : ''}central-registry${when}`;
  }

  // The feed and the transitions around a moment follow the search box too.
  function matchesName(name) {
    return !state.search || name.includes(state.search);
  }

  // The page's service blocks, reconciled with those on screen: a block is built again only
  // when its service changed since it was drawn (or the status filter did); the others stay
  // the very same nodes.
  function renderList() {
    const page = state.page;
    const loading = !page || (state.viewing && page.at !== state.viewing.at) || (!state.viewing && page.at);
    el.serviceList.setAttribute('aria-busy', loading || state.loading ? 'true' : 'false');
    el.servicesWhen.textContent = state.viewing ? `at ${formatDateTime(state.viewing.at)}` : 'now';
    if (loading) {
      if (!el.serviceList.querySelector('.service')) {
        const waiting = {
          unauthorized: 'The services appear once the registry accepts the read token.',
          unavailable: 'The services appear once the registry answers.',
        };
        const text = (!state.viewing && waiting[el.body.dataset.connection]) || 'Loading…';
        const shown = el.serviceList.firstElementChild;
        if (!shown || shown.textContent !== text) el.serviceList.replaceChildren(h('p', { class: 'empty' }, text));
      }
      return;
    }
    const statusFilter = el.filterStatus.value;
    const drawn = new Map();
    for (const node of el.serviceList.children) {
      if (node.dataset.service) drawn.set(node.dataset.service, node);
    }
    const wanted = [];
    for (const service of page.services.values()) {
      const all = [...service.instances.values()];
      const instances = statusFilter ? all.filter((i) => i.status === statusFilter) : all;
      if (instances.length === 0 && statusFilter) continue;
      const key = `${service.version}|${statusFilter}`;
      let node = drawn.get(service.name);
      if (!node || node.drawnAs !== key) {
        node = renderService({ name: service.name, status: service.status, instances: all }, instances);
        node.drawnAs = key;
        fillTimes(node);
      }
      wanted.push(node);
    }
    if (wanted.length === 0) {
      let message;
      if (page.impossible) message = `No service name contains "${state.search}": names hold only a-z, 0-9 and -.`;
      else if (page.services.size === 0 && state.search) message = `No service name contains "${state.search}".`;
      else if (page.services.size === 0) message = state.viewing ? 'No instance was registered at that moment.' : 'No service is registered yet.';
      else message = 'No instance on this page has that status.';
      const shown = el.serviceList.firstElementChild;
      if (!shown || shown.dataset.service || shown.textContent !== message) {
        el.serviceList.replaceChildren(h('p', { class: 'empty' }, message));
      }
      return;
    }
    // Only when a block came, went or was built again: otherwise the list is left alone.
    const now = [...el.serviceList.children];
    if (now.length !== wanted.length || now.some((node, i) => node !== wanted[i])) {
      el.serviceList.replaceChildren(...wanted);
    }
  }

  // Previous and Next, and where the page is: page N (of M, when the summary tells how
  // many services there are and no search narrows them), and its first and last service.
  function renderPager() {
    const page = state.page;
    const position = state.position;
    const focused = document.activeElement;
    el.pagePrevious.disabled = position.before.length === 0;
    el.pageNext.disabled = !page || !page.nextCursor;
    // A keyboard on the button just disabled (the first or last page) keeps its place.
    if (focused === el.pageNext && el.pageNext.disabled && !el.pagePrevious.disabled) el.pagePrevious.focus();
    if (focused === el.pagePrevious && el.pagePrevious.disabled && !el.pageNext.disabled) el.pageNext.focus();
    let text = `Page ${position.number}`;
    const total = state.summary && state.summary.services ? state.summary.services.total : null;
    if (!state.search && total !== null && total !== undefined) {
      text += ` of ${Math.max(1, Math.ceil(total / PAGE_SIZE))}`;
    }
    if (page && page.services.size > 0) {
      const names = [...page.services.keys()];
      text += `: ${names[0]} … ${names[names.length - 1]}`;
    }
    if (state.search) text += ` (names containing "${state.search}")`;
    if (el.pageIndicator.textContent !== text) el.pageIndicator.textContent = text;
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
    // Drawn again only when the transitions or the search changed, not per live event.
    if (viewing.drawn && viewing.drawn.around === viewing.around && viewing.drawn.search === state.search) return;
    viewing.drawn = { around: viewing.around, search: state.search };
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
    fillTimes(document);
    if (!state.viewing && !state.scrubbing) updateScrubber();
  }

  // The relative times under `root`, as of the moment shown.
  function fillTimes(root) {
    const now = referenceTime();
    for (const node of root.querySelectorAll('time.rel')) {
      node.textContent = relText(node.getAttribute('datetime'), node.dataset.style, now);
    }
  }

  // ---- Controls ----------------------------------------------------------------------

  function earliestKnown() {
    if (state.historyStart) return state.historyStart.getTime();
    let earliest = Date.now() - 60 * 60 * 1000;
    if (state.page) {
      for (const service of state.page.services.values()) {
        for (const instance of service.instances.values()) earliest = Math.min(earliest, Date.parse(instance.registered_at));
      }
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
  el.filterName.addEventListener('input', searchTyped);
  el.filterStatus.addEventListener('change', queueRender);
  el.pagePrevious.addEventListener('click', previousPage);
  el.pageNext.addEventListener('click', nextPage);

  setInterval(tick, 1000);
  setMode();
  connect();
})();

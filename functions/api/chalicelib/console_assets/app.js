// tickstream console: one page over the API (Preact + htm, no build step). Every value from the API is rendered
// as text by Preact (no innerHTML anywhere), so a broker named <img src=x onerror=...> shows as those characters.
// The token lives in sessionStorage (this tab only) and is sent as the bearer header, never in a URL.
'use strict';
(function () {
  const { h, render } = window.preact;
  const { useState, useEffect, useRef, useCallback, useMemo } = window.preactHooks;
  const html = window.htm.bind(h);

  const TOKEN_KEY = 'tickstream.token';
  // /console under chalice local, /<stage>/console behind API Gateway: the API is the same prefix without it.
  const API_BASE = location.pathname.replace(/\/console\/?$/, '');
  const REFRESH_MS = 5000;
  const PAGE_SIZE = 25;
  const INTERVALS = { '1s': 1, '1m': 60, '5m': 300, '1h': 3600, '1d': 86400 };
  // The default chart range, in bars back from now: 15 min of 1s, 15 h of 1m, 2 days of 5m, 2 weeks of 1h, 90 days.
  const DEFAULT_BARS = { '1s': 900, '1m': 900, '5m': 576, '1h': 336, '1d': 90 };
  const MAX_CANDLE_CALLS = 20;
  const PAGES = [['overview', 'Overview'], ['brokers', 'Brokers'], ['scripts', 'Scripts'], ['ticks', 'Ticks'],
    ['chart', 'Chart'], ['coverage', 'Coverage']];
  const STATUS_STALE_S = 60;  // the producer reports every few seconds: older than this, say how old

  class ApiError extends Error {
    constructor(status, body) {
      const error = body && typeof body === 'object' && body.error ? body.error : {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || '';
      this.fields = error.fields || [];
    }
  }

  async function request(token, method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API_BASE + path, init);
    const text = await response.text();
    const isJson = (response.headers.get('Content-Type') || '').startsWith('application/json');
    const data = isJson && text ? JSON.parse(text) : text;
    if (!response.ok) throw new ApiError(response.status, data);
    return { data, headers: response.headers };
  }

  // --- formatting --------------------------------------------------------------------------------------------
  const count = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
  const ms = (n) => (n === null || n === undefined ? '–' : `${Number(n).toFixed(1)} ms`);
  const time = (iso) => (iso ? iso.replace('T', ' ').replace(/(\.\d{3})\d*/, '$1').replace('Z', ' UTC') : '–');
  // <input type=datetime-local> values, read and written as UTC.
  const fromInput = (value) => (value ? `${value.length === 16 ? `${value}:00` : value}Z` : '');
  const toInput = (date) => date.toISOString().slice(0, 19);

  function fieldMap(error) {
    const map = {};
    for (const field of (error && error.fields) || []) {
      const name = field.field.replace(/^(api_config|additional_data)\./, '');
      map[name] = map[name] ? `${map[name]}; ${field.message}` : field.message;
    }
    return map;
  }

  function useHashRoute() {
    const parse = () => {
      const [page, query] = location.hash.replace(/^#\/?/, '').split('?');
      return { page: PAGES.some(([id]) => id === page) ? page : 'overview', params: new URLSearchParams(query || '') };
    };
    const [route, setRoute] = useState(parse);
    useEffect(() => {
      const onChange = () => setRoute(parse());
      window.addEventListener('hashchange', onChange);
      return () => window.removeEventListener('hashchange', onChange);
    }, []);
    return route;
  }

  // A confirmation dialog: `ask({title, message, confirm})` resolves to true or false.
  function useConfirm() {
    const [pending, setPending] = useState(null);
    const ask = useCallback((options) => new Promise((resolve) => setPending({ ...options, resolve })), []);
    const close = (answer) => { pending.resolve(answer); setPending(null); };
    const dialog = pending && html`
      <div class="modal-backdrop">
        <div class="modal" role="dialog" aria-modal="true" aria-label=${pending.title}>
          <h2>${pending.title}</h2>
          <p>${pending.message}</p>
          <div class="actions">
            <button onClick=${() => close(false)}>Cancel</button>
            <button class="primary" data-confirm onClick=${() => close(true)}>${pending.confirm || 'Confirm'}</button>
          </div>
        </div>
      </div>`;
    return [dialog, ask];
  }

  function Field({ label, name, errors, children }) {
    return html`<div class="field">
      <label for=${`f-${name}`}>${label}</label>
      ${children}
      ${errors && errors[name] ? html`<span class="field-error" data-field-error=${name}>${errors[name]}</span>` : null}
    </div>`;
  }

  function Notice({ notice, error }) {
    return html`${notice ? html`<div class="notice" role="status">${notice}</div>` : null}
      ${error ? html`<div class="error" role="alert">${error}</div>` : null}`;
  }

  function useLoader(load, deps) {
    const [state, setState] = useState({ data: null, error: null });
    const reload = useCallback(async () => {
      try {
        setState({ data: await load(), error: null });
      } catch (error) {
        setState((old) => ({ data: old.data, error: error.message }));
      }
    }, deps);
    useEffect(() => { reload(); }, [reload]);
    return [state.data, state.error, reload];
  }

  // The broker types and what each offers (default endpoints, streams, symbol format), from tickstream.venues.
  const venuesOf = async (call) => (await call('GET', '/console/venues.json')).data;
  const venueOf = (venues, type) => venues.find((v) => v.type === type) || { type, title: type, ws_url: '', rest_url: '', streams: [], symbol_example: '' };

  // --- sign-in -----------------------------------------------------------------------------------------------
  function SignIn({ onSignedIn, message }) {
    const [token, setToken] = useState('');
    const [error, setError] = useState(message || '');
    const [busy, setBusy] = useState(false);
    const submit = async (event) => {
      event.preventDefault();
      setBusy(true);
      try {
        await request(token.trim(), 'GET', '/brokers');
        onSignedIn(token.trim());
      } catch (failure) {
        setError(failure.status === 401 ? 'That token was not accepted.' : failure.message);
      } finally {
        setBusy(false);
      }
    };
    return html`<form class="card signin" onSubmit=${submit}>
      <h1>tickstream console</h1>
      <p class="muted">Sign in with the API token (API_TOKEN). It is kept in this tab only.</p>
      <${Field} label="API token" name="token">
        <input id="f-token" type="password" autocomplete="current-password" value=${token}
               onInput=${(e) => setToken(e.target.value)} />
      </${Field}>
      <${Notice} error=${error} />
      <button class="primary" type="submit" disabled=${busy || !token.trim()}>Sign in</button>
    </form>`;
  }

  // --- overview ----------------------------------------------------------------------------------------------
  // The producer's own view (producer_status) when it has reported the script, else what /stats can tell.
  function producerStatus(status, generatedAt) {
    const labels = { subscribed: ['live', 'subscribed'], unknown_symbol: ['bad', 'unknown symbol'],
      unknown_type: ['bad', 'unknown broker type'],
      lagging: ['lagging', 'lagging'], connecting: ['idle', 'connecting'] };
    let [kind, label] = labels[status.state] || ['idle', status.state];
    if (status.state === 'backfilling') {
      kind = 'backfilling';
      label = status.backfill_total ? `backfilling ${count(status.backfill_done || 0)} / ${count(status.backfill_total)}`
        + ` (${Math.floor((100 * (status.backfill_done || 0)) / status.backfill_total)}%)` : 'backfilling';
    }
    const age = (Date.parse(generatedAt) - Date.parse(status.reported_at)) / 1000;
    if (age > STATUS_STALE_S) label += ` · reported ${Math.round(age / 60)} min ago`;
    return [kind, label];
  }

  function scriptStatus(script, generatedAt) {
    if (!script.is_active) return ['inactive', 'inactive'];
    if (script.status) return producerStatus(script.status, generatedAt);
    if (!script.last_trade_at) return ['empty', 'no ticks yet'];
    if (script.lag_ms_p99 !== null && script.lag_ms_p99 > 5000) return ['lagging', 'lagging'];
    const age = (Date.parse(generatedAt) - Date.parse(script.last_trade_at)) / 1000;
    if (age > 60) return ['idle', `idle ${Math.round(age / 60)} min`];
    return ['live', 'live'];
  }

  function QueueCard({ title, depth }) {
    return html`<div class="card" data-queue=${title}>
      <div class="muted">${title}</div>
      ${depth.approximate_messages === null
        ? html`<div class="muted">${depth.reason}</div>`
        : html`<div class="big">${count(depth.approximate_messages)}</div>
               <div class="muted">${count(depth.approximate_in_flight)} in flight · ${count(depth.approximate_delayed)} delayed</div>`}
    </div>`;
  }

  function Overview({ call }) {
    const [stats, setStats] = useState(null);
    const [brokers, setBrokers] = useState({});
    const [error, setError] = useState('');
    const [notice, setNotice] = useState('');
    const [busy, setBusy] = useState(false);
    const [dialog, ask] = useConfirm();
    const load = useCallback(async () => {
      try {
        setStats((await call('GET', '/stats')).data);
        setError('');
      } catch (failure) {
        setError(failure.message);
      }
    }, [call]);
    useEffect(() => {
      load();
      call('GET', '/brokers').then(({ data }) => setBrokers(Object.fromEntries(data.brokers.map((b) => [b.id, b.name]))))
        .catch((failure) => setError(failure.message));
      const timer = setInterval(load, REFRESH_MS);
      return () => clearInterval(timer);
    }, [load]);
    const redrive = async () => {
      const waiting = stats ? stats.queues.dlq.approximate_messages : null;
      const yes = await ask({ title: 'Redrive the DLQ?', confirm: 'Redrive',
        message: `Move ${waiting === null ? 'all' : count(waiting)} message(s) from the dead-letter queue back to the ticks queue. The ingest function stores each tick once, so a message already stored costs nothing.` });
      if (!yes) return;
      setBusy(true);
      try {
        const { data } = await call('POST', '/dlq/redrive', {});
        setNotice(`Redrive ${data.complete ? 'complete' : 'started'}: ${count(data.moved)} moved, ${count(data.failed)} failed (${data.method}).`);
        load();
      } catch (failure) {
        setError(`Redrive failed: ${failure.message}`);
      } finally {
        setBusy(false);
      }
    };
    if (!stats) return html`<h1>Overview</h1><${Notice} error=${error} /><p class="muted">Loading…</p>`;
    return html`<h1>Overview</h1>
      <p class="muted">Refreshes every ${REFRESH_MS / 1000} s · updated ${time(stats.generated_at)}</p>
      <${Notice} notice=${notice} error=${error} />
      <div class="cards">
        <${QueueCard} title="Ticks queue" depth=${stats.queues.queue} />
        <${QueueCard} title="Dead-letter queue" depth=${stats.queues.dlq} />
        <div class="card"><div class="muted">DLQ redrive</div>
          <p><button class="primary" data-action="redrive" disabled=${busy} onClick=${redrive}>Redrive DLQ…</button></p>
        </div>
      </div>
      <h2>Symbols</h2>
      <table data-table="overview">
        <thead><tr><th>Symbol</th><th>Name</th><th>Broker</th><th>Status</th><th class="num">Stored</th>
          <th class="num">Last minute</th><th class="num">Lag p50</th><th class="num">Lag p99</th><th>Last trade</th>
          <th class="num">Incomplete days</th><th class="num">Missing trades</th><th></th></tr></thead>
        <tbody>${stats.scripts.map((s) => {
          const [kind, label] = scriptStatus(s, stats.generated_at);
          return html`<tr key=${s.script_id} data-script=${s.script_id}>
            <td>${s.trading_symbol}</td><td>${s.name}</td><td>${brokers[s.broker_id] || s.broker_id}</td>
            <td><span class=${`status ${kind}`} data-col="status" title=${(s.status && s.status.detail) || ''}>${label}</span></td>
            <td class="num" data-col="stored">${count(s.tick_count)}</td><td class="num">${count(s.ticks_last_minute)}</td>
            <td class="num">${ms(s.lag_ms_p50)}</td><td class="num">${ms(s.lag_ms_p99)}</td><td>${time(s.last_trade_at)}</td>
            <td class=${`num${s.incomplete_days ? ' bad' : ''}`} data-col="incomplete_days">${count(s.incomplete_days)}</td>
            <td class=${`num${s.missing_trades ? ' bad' : ''}`} data-col="missing_trades">${count(s.missing_trades)}</td>
            <td><a class="button" href=${`#/coverage?script=${s.script_id}`}>Coverage</a></td>
          </tr>`;
        })}</tbody>
      </table>
      ${stats.scripts.length === 0 ? html`<p class="muted">No scripts yet: add a broker, then its scripts.</p>` : null}
      ${dialog}`;
  }

  // --- brokers -----------------------------------------------------------------------------------------------
  const emptyBroker = { id: null, name: '', type: 'binance', ws_url: '', rest_url: '', is_active: true, extra: {} };

  function Brokers({ call }) {
    const [data, loadError, reload] = useLoader(async () => {
      const [brokers, scripts, venues] = await Promise.all([call('GET', '/brokers'), call('GET', '/scripts'), venuesOf(call)]);
      return { brokers: brokers.data.brokers, scripts: scripts.data.scripts, venues };
    }, [call]);
    const [form, setForm] = useState(emptyBroker);
    const [errors, setErrors] = useState({});
    const [error, setError] = useState('');
    const [notice, setNotice] = useState('');
    const [dialog, ask] = useConfirm();
    const set = (name) => (e) => setForm({ ...form, [name]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
    const edit = (b) => {
      const { ws_url: ws, rest_url: rest, ...extra } = b.api_config;
      setForm({ id: b.id, name: b.name, type: b.type, ws_url: ws || '', rest_url: rest || '', is_active: b.is_active, extra });
      setErrors({});
    };
    const submit = async (event) => {
      event.preventDefault();
      const apiConfig = { ...form.extra };
      if (form.ws_url.trim()) apiConfig.ws_url = form.ws_url.trim();
      if (form.rest_url.trim()) apiConfig.rest_url = form.rest_url.trim();
      const body = { name: form.name, type: form.type, api_config: apiConfig, is_active: form.is_active };
      try {
        const { data: saved } = form.id ? await call('PATCH', `/brokers/${form.id}`, body) : await call('POST', '/brokers', body);
        setNotice(`Broker “${saved.name}” ${form.id ? 'saved' : 'added'}.`);
        setForm(emptyBroker); setErrors({}); setError('');
        reload();
      } catch (failure) {
        setErrors(fieldMap(failure)); setError(failure.message); setNotice('');
      }
    };
    const toggle = async (b) => {
      try {
        await call('PATCH', `/brokers/${b.id}`, { is_active: !b.is_active });
        setNotice(`Broker “${b.name}” ${b.is_active ? 'deactivated' : 'activated'}.`);
        reload();
      } catch (failure) { setError(failure.message); }
    };
    const remove = async (b) => {
      const scripts = data.scripts.filter((s) => s.broker_id === b.id).length;
      const purge = scripts > 0;
      const yes = await ask({ title: `Delete broker “${b.name}”?`, confirm: purge ? 'Delete and purge' : 'Delete',
        message: purge ? `It has ${scripts} script(s). Deleting it also deletes them and every tick stored for them, in the background (deactivate it first). This cannot be undone.`
          : 'It has no scripts.' });
      if (!yes) return;
      setNotice(`Deleting “${b.name}”…`);
      try {
        const { data: done } = await call('DELETE', `/brokers/${b.id}${purge ? '?purge=true' : ''}`);
        const deleted = done.state ? await followPurge(call, done, `broker “${b.name}”`, setNotice) : done.ticks_deleted;
        setNotice(`Broker “${b.name}” deleted with ${count(done.state ? scripts : done.scripts_deleted)} script(s) and ${count(deleted)} tick(s).`);
        reload();
      } catch (failure) { setError(failure.message); setNotice(''); }
    };
    const venues = data ? data.venues : [];
    const chosen = venueOf(venues, form.type);
    return html`<h1>Brokers</h1>
      <${Notice} notice=${notice} error=${loadError} />
      <table data-table="brokers">
        <thead><tr><th>Id</th><th>Name</th><th>Type</th><th>Active</th><th>WebSocket URL</th><th>REST URL</th>
          <th class="num">Scripts</th><th></th></tr></thead>
        <tbody>${(data ? data.brokers : []).map((b) => html`<tr key=${b.id} data-broker=${b.id}>
          <td>${b.id}</td><td data-col="name">${b.name}</td><td>${b.type}</td><td>${b.is_active ? 'yes' : 'no'}</td>
          <td class="break">${b.api_config.ws_url || venueOf(venues, b.type).title}</td><td class="break">${b.api_config.rest_url || venueOf(venues, b.type).title}</td>
          <td class="num">${data.scripts.filter((s) => s.broker_id === b.id).length}</td>
          <td><button onClick=${() => edit(b)}>Edit</button> <button onClick=${() => toggle(b)}>${b.is_active ? 'Deactivate' : 'Activate'}</button>
            <button class="danger" onClick=${() => remove(b)}>Delete…</button></td></tr>`)}
        </tbody>
      </table>
      <form class="card" data-form="broker" onSubmit=${submit}>
        <h2>${form.id ? `Edit broker ${form.id}` : 'Add a broker'}</h2>
        <div class="fields">
          <${Field} label="Name" name="name" errors=${errors}><input id="f-name" value=${form.name} onInput=${set('name')} /></${Field}>
          <${Field} label="Type" name="type" errors=${errors}>
            <select id="f-type" value=${form.type} onChange=${set('type')}>
              ${venues.map((v) => html`<option value=${v.type}>${v.title} (${v.type})</option>`)}</select></${Field}>
          <${Field} label=${`WebSocket URL (empty: ${chosen.title})`} name="ws_url" errors=${errors}>
            <input id="f-ws_url" size="32" value=${form.ws_url} onInput=${set('ws_url')} placeholder=${chosen.ws_url} /></${Field}>
          <${Field} label=${`REST URL (empty: ${chosen.title})`} name="rest_url" errors=${errors}>
            <input id="f-rest_url" size="32" value=${form.rest_url} onInput=${set('rest_url')} placeholder=${chosen.rest_url} /></${Field}>
          <${Field} label="Active" name="is_active" errors=${errors}>
            <input id="f-is_active" type="checkbox" checked=${form.is_active} onChange=${set('is_active')} /></${Field}>
        </div>
        <${Notice} error=${error} />
        <button class="primary" type="submit">${form.id ? 'Save' : 'Add broker'}</button>
        ${form.id ? html` <button type="button" onClick=${() => { setForm(emptyBroker); setErrors({}); }}>Cancel</button>` : null}
      </form>
      ${dialog}`;
  }

  // --- scripts -----------------------------------------------------------------------------------------------
  const emptyScript = { id: null, broker_id: '', name: '', trading_symbol: '', stream: '', is_active: true, extra: {} };
  const SCRIPT_COLUMNS = [['id', 'Id'], ['trading_symbol', 'Symbol'], ['name', 'Name'], ['broker', 'Broker'],
    ['stream', 'Stream'], ['is_active', 'Active'], ['ticks', 'Ticks'], ['created_at', 'Created']];

  // A purge with ticks (a script's, or a broker's with scripts) runs in the background (202 and a job): poll it,
  // showing its progress, until it is done.
async function followPurge(call, job, what, setNotice) {
  while (job.state !== 'done') {
    if (job.state === 'failed') throw new Error(`Purging ${what} failed: ${job.error}`);
    setNotice(`Purging ${what} in the background (job ${job.id}): ${count(job.rows_deleted)} tick(s) deleted so far…`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    ({ data: job } = await call('GET', `/jobs/${job.id}`));
  }
  return job.rows_deleted;
}

function Scripts({ call }) {
    const [data, loadError, reload] = useLoader(async () => {
      const [brokers, scripts, stats, venues] = await Promise.all([call('GET', '/brokers'), call('GET', '/scripts'),
        call('GET', '/stats'), venuesOf(call)]);
      return { brokers: brokers.data.brokers, scripts: scripts.data.scripts, venues,
        ticks: Object.fromEntries(stats.data.scripts.map((s) => [s.script_id, s.tick_count])) };
    }, [call]);
    const [filter, setFilter] = useState({ broker: '', active: '', search: '' });
    const [sort, setSort] = useState({ key: 'id', desc: false });
    const [page, setPage] = useState(0);
    const [selected, setSelected] = useState(new Set());
    const [form, setForm] = useState(emptyScript);
    const [errors, setErrors] = useState({});
    const [error, setError] = useState('');
    const [notice, setNotice] = useState('');
    const [dialog, ask] = useConfirm();
    const brokerName = (id) => ((data && data.brokers.find((b) => b.id === id)) || { name: String(id) }).name;
    // The venue of a broker id (a form's string or a script's number): its streams and symbol format.
    const brokerVenue = (id) => {
      const broker = data && data.brokers.find((b) => b.id === Number(id));
      return venueOf(data ? data.venues : [], broker ? broker.type : '');
    };
    const streamOf = (s) => s.additional_data.stream || brokerVenue(s.broker_id).streams[0] || '';
    const rows = useMemo(() => {
      if (!data) return [];
      const search = filter.search.trim().toLowerCase();
      const value = (s) => ({ broker: brokerName(s.broker_id), stream: streamOf(s),
        ticks: data.ticks[s.id] || 0 }[sort.key] ?? s[sort.key]);
      return data.scripts
        .filter((s) => !filter.broker || s.broker_id === Number(filter.broker))
        .filter((s) => !filter.active || String(s.is_active) === filter.active)
        .filter((s) => !search || s.name.toLowerCase().includes(search) || s.trading_symbol.toLowerCase().includes(search))
        .sort((a, b) => {
          const [x, y] = [value(a), value(b)];
          const order = typeof x === 'number' || typeof x === 'boolean' ? Number(x) - Number(y) : String(x).localeCompare(String(y));
          return sort.desc ? -order : order;
        });
    }, [data, filter, sort]);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    const shown = rows.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    useEffect(() => { if (page >= pages) setPage(pages - 1); }, [pages]);
    const setFilterField = (name) => (e) => { setFilter({ ...filter, [name]: e.target.value }); setPage(0); };
    const set = (name) => (e) => setForm({ ...form, [name]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
    const toggleRow = (id) => { const next = new Set(selected); next.has(id) ? next.delete(id) : next.add(id); setSelected(next); };
    const allShown = shown.length > 0 && shown.every((s) => selected.has(s.id));
    const toggleAll = () => { const next = new Set(selected); shown.forEach((s) => (allShown ? next.delete(s.id) : next.add(s.id))); setSelected(next); };
    const bulk = async (active) => {
      const ids = [...selected];
      let done = 0;
      try {
        for (const id of ids) { await call('PATCH', `/scripts/${id}`, { is_active: active }); done += 1; }
        setNotice(`${done} script(s) ${active ? 'activated' : 'deactivated'}.`); setError('');
        setSelected(new Set());
      } catch (failure) { setError(`${done} of ${ids.length} changed; then: ${failure.message}`); }
      reload();
    };
    const edit = (s) => {
      const { stream, ...extra } = s.additional_data;
      setForm({ id: s.id, broker_id: String(s.broker_id), name: s.name, trading_symbol: s.trading_symbol,
        stream: stream || '', is_active: s.is_active, extra });
      setErrors({});
    };
    const submit = async (event) => {
      event.preventDefault();
      const additionalData = { ...form.extra };
      if (form.stream) additionalData.stream = form.stream;  // unset: the venue's first
      const body = { broker_id: form.broker_id === '' ? null : Number(form.broker_id), name: form.name,
        trading_symbol: form.trading_symbol, additional_data: additionalData, is_active: form.is_active };
      try {
        const { data: saved } = form.id ? await call('PATCH', `/scripts/${form.id}`, body) : await call('POST', '/scripts', body);
        setNotice(`Script ${saved.trading_symbol} ${form.id ? 'saved' : 'added'}.`);
        setForm(emptyScript); setErrors({}); setError('');
        reload();
      } catch (failure) { setErrors(fieldMap(failure)); setError(failure.message); setNotice(''); }
    };
    const remove = async (s) => {
      const ticks = data.ticks[s.id] || 0;
      const yes = await ask({ title: `Delete script ${s.trading_symbol}?`, confirm: ticks ? 'Delete and purge' : 'Delete',
        message: ticks ? `It has ${count(ticks)} stored tick(s); deleting it deletes them too, in the background (deactivate it first). To stop collecting and keep them, deactivate it instead.`
          : 'It has no stored ticks.' });
      if (!yes) return;
      try {
        const { data: done } = await call('DELETE', `/scripts/${s.id}${ticks ? '?purge=true' : ''}`);
        const deleted = done.state ? await followPurge(call, done, s.trading_symbol, setNotice) : done.ticks_deleted;
        setNotice(`Script ${s.trading_symbol} deleted with ${count(deleted)} tick(s).`);
        reload();
      } catch (failure) { setError(failure.message); setNotice(''); }
    };
    const header = ([key, label]) => html`<th class="sortable" data-sort=${key}
      onClick=${() => setSort({ key, desc: sort.key === key ? !sort.desc : false })}>${label}${sort.key === key ? (sort.desc ? ' ▼' : ' ▲') : ''}</th>`;
    const brokers = data ? data.brokers : [];
    const chosen = brokerVenue(form.broker_id);
    // A new broker may not offer the chosen stream: fall back to its default (unset).
    const setBroker = (e) => setForm({ ...form, broker_id: e.target.value,
      stream: brokerVenue(e.target.value).streams.includes(form.stream) ? form.stream : '' });
    return html`<h1>Scripts</h1>
      <${Notice} notice=${notice} error=${loadError} />
      <div class="toolbar">
        <select data-filter="broker" value=${filter.broker} onChange=${setFilterField('broker')}>
          <option value="">All brokers</option>${brokers.map((b) => html`<option value=${b.id}>${b.name}</option>`)}</select>
        <select data-filter="active" value=${filter.active} onChange=${setFilterField('active')}>
          <option value="">Active and inactive</option><option value="true">Active</option><option value="false">Inactive</option></select>
        <input type="search" data-filter="search" placeholder="Search name or symbol" value=${filter.search} onInput=${setFilterField('search')} />
        <span class="muted">${rows.length} script(s)</span>
        <button data-action="activate" disabled=${!selected.size} onClick=${() => bulk(true)}>Activate selected</button>
        <button data-action="deactivate" disabled=${!selected.size} onClick=${() => bulk(false)}>Deactivate selected</button>
      </div>
      <table data-table="scripts">
        <thead><tr><th><input type="checkbox" aria-label="select page" checked=${allShown} onChange=${toggleAll} /></th>
          ${SCRIPT_COLUMNS.map(header)}<th></th></tr></thead>
        <tbody>${shown.map((s) => html`<tr key=${s.id} data-script=${s.id}>
          <td><input type="checkbox" aria-label=${`select ${s.trading_symbol}`} checked=${selected.has(s.id)} onChange=${() => toggleRow(s.id)} /></td>
          <td>${s.id}</td><td data-col="symbol">${s.trading_symbol}</td><td>${s.name}</td><td>${brokerName(s.broker_id)}</td>
          <td>${streamOf(s)}</td><td data-col="active">${s.is_active ? 'yes' : 'no'}</td>
          <td class="num">${count(data.ticks[s.id] || 0)}</td><td>${time(s.created_at)}</td>
          <td><button onClick=${() => edit(s)}>Edit</button> <a class="button" href=${`#/ticks?script=${s.id}`}>Ticks</a>
            <a class="button" href=${`#/chart?script=${s.id}`}>Chart</a>
            <a class="button" href=${`#/coverage?script=${s.id}`}>Coverage</a> <button class="danger" onClick=${() => remove(s)}>Delete…</button></td>
        </tr>`)}</tbody>
      </table>
      <div class="toolbar">
        <button data-action="prev-page" disabled=${page === 0} onClick=${() => setPage(page - 1)}>‹ Previous</button>
        <span>Page ${page + 1} of ${pages}</span>
        <button data-action="next-page" disabled=${page + 1 >= pages} onClick=${() => setPage(page + 1)}>Next ›</button>
      </div>
      <form class="card" data-form="script" onSubmit=${submit}>
        <h2>${form.id ? `Edit script ${form.id}` : 'Add a script'}</h2>
        <div class="fields">
          <${Field} label="Broker" name="broker_id" errors=${errors}>
            <select id="f-broker_id" value=${form.broker_id} onChange=${setBroker}>
              <option value="">Choose…</option>${brokers.map((b) => html`<option value=${b.id}>${b.name}</option>`)}</select></${Field}>
          <${Field} label="Name" name="name" errors=${errors}><input id="f-name" value=${form.name} onInput=${set('name')} /></${Field}>
          <${Field} label="Trading symbol" name="trading_symbol" errors=${errors}>
            <input id="f-trading_symbol" value=${form.trading_symbol} onInput=${set('trading_symbol')} placeholder=${chosen.symbol_example || 'BTCUSDT'} /></${Field}>
          <${Field} label="Stream" name="stream" errors=${errors}>
            <select id="f-stream" value=${form.stream} onChange=${set('stream')}>
              <option value="">${chosen.streams.length ? `${chosen.streams[0]} (default)` : 'default'}</option>
              ${chosen.streams.map((stream) => html`<option value=${stream}>${stream}</option>`)}</select></${Field}>
          <${Field} label="Active" name="is_active" errors=${errors}>
            <input id="f-is_active" type="checkbox" checked=${form.is_active} onChange=${set('is_active')} /></${Field}>
        </div>
        <${Notice} error=${error} />
        <button class="primary" type="submit">${form.id ? 'Save' : 'Add script'}</button>
        ${form.id ? html` <button type="button" onClick=${() => { setForm(emptyScript); setErrors({}); }}>Cancel</button>` : null}
      </form>
      ${dialog}`;
  }

  // --- ticks -------------------------------------------------------------------------------------------------
  function ScriptPicker({ scripts, value, onChange }) {
    return html`<select data-filter="script" value=${value} onChange=${(e) => onChange(e.target.value)}>
      <option value="">Choose a script…</option>
      ${scripts.map((s) => html`<option value=${s.id}>${s.trading_symbol} · ${s.name}</option>`)}</select>`;
  }

  function useScripts(call) {
    const [scripts, setScripts] = useState([]);
    useEffect(() => { call('GET', '/scripts').then(({ data }) => setScripts(data.scripts)).catch(() => {}); }, [call]);
    return scripts;
  }

  function rangeQuery(range) {
    const query = new URLSearchParams();
    if (range.from) query.set('from', fromInput(range.from));
    if (range.to) query.set('to', fromInput(range.to));
    return query;
  }

  function Ticks({ call, params }) {
    const scripts = useScripts(call);
    const [script, setScript] = useState(params.get('script') || '');
    const [range, setRange] = useState({ from: '', to: '' });
    const [limit, setLimit] = useState('50');
    const [cursors, setCursors] = useState([null]);  // the cursor of each page seen so far: Previous pops
    const [page, setPage] = useState(null);
    const [error, setError] = useState('');
    const [download, setDownload] = useState('');
    const cursor = cursors[cursors.length - 1];
    const load = useCallback(async () => {
      if (!script) { setPage(null); return; }
      const query = rangeQuery(range);
      query.set('limit', limit);
      if (cursor) query.set('cursor', cursor);
      try {
        setPage((await call('GET', `/scripts/${script}/ticks?${query}`)).data);
        setError('');
      } catch (failure) { setError(failure.message); }
    }, [call, script, range, limit, cursor]);
    useEffect(() => { load(); }, [load]);
    const restart = (change) => { change(); setCursors([null]); };
    const downloadCsv = async () => {
      const query = rangeQuery(range);
      let text = '';
      let name = 'ticks.csv';
      const rowsIn = () => Math.max(0, text.split('\n').length - 2);  // less the header row and the final newline
      setDownload('Downloading…');
      try {
        for (;;) {
          const { data, headers } = await call('GET', `/scripts/${script}/ticks.csv?${query}`);
          text += text ? data.slice(data.indexOf('\n') + 1) : data;  // the header row once
          const match = /filename="([^"]+)"/.exec(headers.get('Content-Disposition') || '');
          if (match) name = match[1];
          const next = headers.get('X-Next-Cursor');
          setDownload(`Downloading… ${count(rowsIn())} rows`);
          if (!next) break;
          query.set('cursor', next);
        }
        const link = document.createElement('a');
        link.href = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
        link.download = name;
        document.body.appendChild(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 60000);
        setDownload(`Downloaded ${name}: ${count(rowsIn())} rows.`);
      } catch (failure) { setDownload(''); setError(`Download failed: ${failure.message}`); }
    };
    return html`<h1>Ticks</h1>
      <div class="toolbar">
        <${ScriptPicker} scripts=${scripts} value=${script} onChange=${(v) => restart(() => { setScript(v); location.hash = `#/ticks?script=${v}`; })} />
        <label>From (UTC) <input type="datetime-local" step="1" data-filter="from" value=${range.from}
          onChange=${(e) => restart(() => setRange({ ...range, from: e.target.value }))} /></label>
        <label>To (UTC) <input type="datetime-local" step="1" data-filter="to" value=${range.to}
          onChange=${(e) => restart(() => setRange({ ...range, to: e.target.value }))} /></label>
        <select data-filter="limit" value=${limit} onChange=${(e) => restart(() => setLimit(e.target.value))}>
          ${['25', '50', '100', '500'].map((n) => html`<option value=${n}>${n} per page</option>`)}</select>
        <button onClick=${load} disabled=${!script}>Refresh</button>
        <button data-action="csv" onClick=${downloadCsv} disabled=${!script}>Download CSV of the range</button>
      </div>
      <${Notice} notice=${download} error=${error} />
      ${page ? html`<table data-table="ticks">
        <thead><tr><th class="num">Trade id</th><th class="num">Price</th><th class="num">Quantity</th><th>Buyer is maker</th>
          <th>Traded at</th><th>Stored at</th></tr></thead>
        <tbody>${page.ticks.map((t) => html`<tr key=${t.trade_id}><td class="num" data-col="trade_id">${t.trade_id}</td>
          <td class="num">${t.price}</td><td class="num">${t.quantity}</td><td>${t.is_buyer_maker ? 'yes' : 'no'}</td>
          <td>${time(t.traded_at)}</td><td>${time(t.stored_at)}</td></tr>`)}</tbody>
      </table>
      ${page.ticks.length === 0 ? html`<p class="muted">No ticks in this range.</p>` : null}
      <div class="toolbar">
        <button data-action="newer" disabled=${cursors.length === 1} onClick=${() => setCursors(cursors.slice(0, -1))}>‹ Newer</button>
        <span>Page ${cursors.length} · newest first</span>
        <button data-action="older" disabled=${!page.next_cursor} onClick=${() => setCursors([...cursors, page.next_cursor])}>Older ›</button>
      </div>` : html`<p class="muted">Choose a script.</p>`}`;
  }

  // --- chart -------------------------------------------------------------------------------------------------
  function defaultRange(interval) {
    const now = new Date();
    return { from: toInput(new Date(now.getTime() - INTERVALS[interval] * DEFAULT_BARS[interval] * 1000)), to: toInput(now) };
  }

  function Chart({ call, params }) {
    const scripts = useScripts(call);
    const [script, setScript] = useState(params.get('script') || '');
    const [interval, setIntervalName] = useState('1m');
    const [range, setRange] = useState(() => defaultRange('1m'));
    const [bars, setBars] = useState(null);
    const [error, setError] = useState('');
    const box = useRef(null);
    const chart = useRef(null);
    const load = useCallback(async () => {
      if (!script) return;
      const query = rangeQuery(range);
      query.set('interval', interval);
      const all = [];
      try {
        for (let calls = 0; calls < MAX_CANDLE_CALLS; calls += 1) {
          const { data } = await call('GET', `/scripts/${script}/candles?${query}`);
          all.push(...data.candles);
          if (!data.next_from) break;
          query.set('from', data.next_from);
        }
        setBars(all);
        setError('');
      } catch (failure) { setError(failure.message); }
    }, [call, script, interval, range]);
    useEffect(() => { load(); }, [load]);
    useEffect(() => {
      const LWC = window.LightweightCharts;
      // The attribution logo injects an inline <style>, which the CSP refuses: the text credit below replaces it.
      const instance = LWC.createChart(box.current, { autoSize: true,
        layout: { textColor: '#1f2328', background: { color: '#ffffff' }, attributionLogo: false },
        timeScale: { timeVisible: true, secondsVisible: true }, grid: { vertLines: { color: '#eef1f4' }, horzLines: { color: '#eef1f4' } } });
      const candles = instance.addSeries(LWC.CandlestickSeries, { upColor: '#1a7f37', downColor: '#cf222e', borderVisible: false,
        wickUpColor: '#1a7f37', wickDownColor: '#cf222e' });
      const volume = instance.addSeries(LWC.HistogramSeries, { priceScaleId: 'volume', priceFormat: { type: 'volume' } });
      instance.priceScale('volume').applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
      candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });
      chart.current = { instance, candles, volume };
      return () => { instance.remove(); chart.current = null; };
    }, []);
    useEffect(() => {
      if (!chart.current || !bars) return;
      const seconds = (bar) => Date.parse(bar.open_time) / 1000;
      // Numbers for drawing only; the exact decimals stay in the API's strings (shown below for the last bar).
      chart.current.candles.setData(bars.map((b) => ({ time: seconds(b), open: Number(b.open), high: Number(b.high),
        low: Number(b.low), close: Number(b.close) })));
      chart.current.volume.setData(bars.map((b) => ({ time: seconds(b), value: Number(b.volume),
        color: Number(b.close) >= Number(b.open) ? 'rgba(26,127,55,.45)' : 'rgba(207,34,46,.45)' })));
      chart.current.instance.timeScale().fitContent();
    }, [bars]);
    const last = bars && bars.length ? bars[bars.length - 1] : null;
    const trades = bars ? bars.reduce((sum, b) => sum + b.trades, 0) : 0;
    return html`<h1>Chart</h1>
      <div class="toolbar">
        <${ScriptPicker} scripts=${scripts} value=${script} onChange=${(v) => { setScript(v); location.hash = `#/chart?script=${v}`; }} />
        <select data-filter="interval" value=${interval} onChange=${(e) => { setIntervalName(e.target.value); setRange(defaultRange(e.target.value)); }}>
          ${Object.keys(INTERVALS).map((name) => html`<option value=${name}>${name}</option>`)}</select>
        <label>From (UTC) <input type="datetime-local" step="1" data-filter="from" value=${range.from} onChange=${(e) => setRange({ ...range, from: e.target.value })} /></label>
        <label>To (UTC) <input type="datetime-local" step="1" data-filter="to" value=${range.to} onChange=${(e) => setRange({ ...range, to: e.target.value })} /></label>
        <button onClick=${load} disabled=${!script}>Refresh</button>
      </div>
      <${Notice} error=${error} />
      <p class="muted" data-chart-summary>${!script ? 'Choose a script.' : bars ? `${count(bars.length)} bars, ${count(trades)} trades` : 'Loading…'}
        ${last ? ` · last bar ${time(last.open_time)}: O ${last.open} H ${last.high} L ${last.low} C ${last.close} V ${last.volume}` : ''}</p>
      <div id="chart" ref=${box}></div>
      <p class="muted">Charts by <a href="https://www.tradingview.com/" rel="noreferrer">TradingView Lightweight Charts™</a>, Copyright © TradingView, Inc.</p>`;
  }

  // --- coverage ----------------------------------------------------------------------------------------------
  const COVERAGE_DAYS = 31;  // the API's default range
  const dayInput = (date) => date.toISOString().slice(0, 10);

  function defaultDays() {
    const today = new Date();
    return { from: dayInput(new Date(today.getTime() - (COVERAGE_DAYS - 1) * 86400000)), to: dayInput(today) };
  }

  function GapRows({ gaps }) {
    if (!gaps.length) return null;
    return html`<tr class="gaps"><td colspan="10">
      <table data-table="gaps">
        <thead><tr><th>Gap</th><th>State</th><th>Cause</th><th class="num">First id</th><th class="num">Last id</th>
          <th class="num">Trades</th><th class="num">Filled</th><th class="num">Attempts</th><th>Last error</th><th>Detected</th></tr></thead>
        <tbody>${gaps.map((g) => html`<tr key=${g.id} data-gap=${g.id}>
          <td>${g.id}</td><td><span class=${`status gap-${g.state}`} data-col="state">${g.state}</span></td><td>${g.cause}</td>
          <td class="num">${g.first_trade_id}</td><td class="num">${g.last_trade_id}</td>
          <td class="num">${count(g.last_trade_id - g.first_trade_id + 1)}</td><td class="num">${count(g.trades_filled)}</td>
          <td class="num" data-col="attempts">${count(g.attempts)}</td>
          <td class="break" data-col="last_error">${g.last_error || '–'}</td><td>${time(g.detected_at)}</td></tr>`)}</tbody>
      </table></td></tr>`;
  }

  function Coverage({ call, params }) {
    const scripts = useScripts(call);
    const [script, setScript] = useState(params.get('script') || '');
    const [range, setRange] = useState(defaultDays);
    const [report, setReport] = useState(null);
    const [error, setError] = useState('');
    const load = useCallback(async () => {
      if (!script) { setReport(null); return; }
      const query = new URLSearchParams();
      if (range.from) query.set('from', range.from);
      if (range.to) query.set('to', range.to);
      try {
        setReport((await call('GET', `/scripts/${script}/coverage?${query}`)).data);
        setError('');
      } catch (failure) { setReport(null); setError(failure.message); }
    }, [call, script, range]);
    useEffect(() => { load(); }, [load]);
    const days = report ? report.days : [];
    const incomplete = days.filter((d) => !d.complete).length;
    const missing = days.reduce((sum, d) => sum + d.missing, 0);
    return html`<h1>Coverage</h1>
      <div class="toolbar">
        <${ScriptPicker} scripts=${scripts} value=${script} onChange=${(v) => { setScript(v); location.hash = `#/coverage?script=${v}`; }} />
        <label>From (UTC day) <input type="date" data-filter="from" value=${range.from} onChange=${(e) => setRange({ ...range, from: e.target.value })} /></label>
        <label>To (UTC day) <input type="date" data-filter="to" value=${range.to} onChange=${(e) => setRange({ ...range, to: e.target.value })} /></label>
        <button onClick=${load} disabled=${!script}>Refresh</button>
      </div>
      <${Notice} error=${error} />
      ${!report ? html`<p class="muted">${script ? (error ? '' : 'Loading…') : 'Choose a script.'}</p>` : html`
      <p data-coverage-summary>${`${report.first_day} to ${report.last_day}: ${count(days.length)} day(s) with ticks, `
        + `${count(incomplete)} incomplete, ${count(missing)} trade(s) missing.`}</p>
      <p class="muted">A day is complete when every trade id from its first to its last stored id is stored. Days
        without stored ticks are not listed.</p>
      ${report.gaps_truncated ? html`<p class="error" data-gaps-truncated>More gaps than one answer holds: not every gap
        is shown below (GET /gaps lists them all).</p>` : null}
      <table data-table="coverage">
        <thead><tr><th>Day (UTC)</th><th>Complete</th><th class="num">Stored</th><th class="num">Expected</th>
          <th class="num">Missing</th><th class="num">First id</th><th>First trade</th><th class="num">Last id</th>
          <th>Last trade</th><th>Audited</th></tr></thead>
        <tbody>${days.map((d) => html`<tr key=${d.day} data-day=${d.day}>
            <td>${d.day}</td><td><span class=${`status ${d.complete ? 'live' : 'bad'}`} data-col="complete">${d.complete ? 'complete' : 'incomplete'}</span></td>
            <td class="num" data-col="stored">${count(d.stored)}</td><td class="num" data-col="expected">${count(d.expected)}</td>
            <td class="num" data-col="missing">${count(d.missing)}</td><td class="num" data-col="first_trade_id">${d.first_trade_id}</td>
            <td>${time(d.first_traded_at)}</td><td class="num" data-col="last_trade_id">${d.last_trade_id}</td>
            <td>${time(d.last_traded_at)}</td><td>${time(d.audited_at)}</td></tr>
          <${GapRows} gaps=${d.gaps} />`)}</tbody>
      </table>
      ${days.length === 0 ? html`<p class="muted">No stored ticks in these days.</p>` : null}`}`;
  }

  // --- shell -------------------------------------------------------------------------------------------------
  function App() {
    const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY) || '');
    const [message, setMessage] = useState('');
    const route = useHashRoute();
    const signOut = useCallback((why) => {
      sessionStorage.removeItem(TOKEN_KEY);
      setToken('');
      setMessage(typeof why === 'string' ? why : '');
    }, []);
    const call = useCallback(async (method, path, body) => {
      try {
        return await request(token, method, path, body);
      } catch (failure) {
        if (failure.status === 401) signOut('The token was refused; sign in again.');
        throw failure;
      }
    }, [token, signOut]);
    if (!token) {
      return html`<${SignIn} message=${message} onSignedIn=${(t) => { sessionStorage.setItem(TOKEN_KEY, t); setMessage(''); setToken(t); }} />`;
    }
    const Page = { overview: Overview, brokers: Brokers, scripts: Scripts, ticks: Ticks, chart: Chart, coverage: Coverage }[route.page];
    return html`<header>
        <span class="brand">tickstream</span>
        <nav>${PAGES.map(([id, label]) => html`<a href=${`#/${id}`} class=${route.page === id ? 'active' : ''}>${label}</a>`)}</nav>
        <button data-action="sign-out" onClick=${() => signOut()}>Sign out</button>
      </header>
      <main><${Page} key=${route.page} call=${call} params=${route.params} /></main>`;
  }

  render(html`<${App} />`, document.getElementById('app'));
}());


(function () {
  var G = JSON.parse(document.getElementById('gallery-data').textContent);
  var root = document.getElementById('gallery-root');
  var state = {model: root.dataset.model, method: root.dataset.method, layer: root.dataset.layer};
  var camLayer = state.layer, uniform = parseFloat(root.dataset.uniform);
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text; return e; }
  function line(parts) { var p = el('div'); parts.forEach(function (x) { p.appendChild(x); }); return p; }
  function caption(M, i, energy) {
    var cap = el('div', 'cap'), target = G.target, flipped = M.flipped[i];
    var kind = G.patched_target[i] ? 'patched' : 'pasted';
    cap.appendChild(line([el('span', 'k', 'true '), el('b', '', G.labels[i]), el('span', 'k', ' \u00b7 ' + kind)]));
    cap.appendChild(line([el('span', '', M.clean[i] + ' \u2192 '), el('b', '', M.shown[i])]));
    var verdict = flipped ? el('span', 'flip', 'flipped to ' + target + ' by the patch')
      : el('span', 'same', M.shown[i] === target ? target + ' with and without the patch' : 'not flipped to ' + target);
    cap.appendChild(line([verdict]));
    cap.appendChild(line([el('span', 'k', 'energy '), el('b', '', energy.toFixed(3)),
                          el('span', 'k', ' (' + (energy / uniform).toFixed(1) + '\u00d7)')]));
    var bar = el('div', 'ebar'), fill = el('i'), mark = el('u');
    fill.style.width = (100 * Math.min(1, energy)) + '%'; mark.style.left = (100 * uniform) + '%';
    bar.appendChild(fill); bar.appendChild(mark); cap.appendChild(bar);
    return cap;
  }
  function render() {
    var layers = G.layers[state.method];
    if (layers.indexOf(state.layer) < 0) state.layer = layers.indexOf(camLayer) >= 0 ? camLayer : layers[layers.length - 1];
    root.querySelectorAll('button[data-group]').forEach(function (b) {
      if (b.dataset.group === 'layer') b.disabled = layers.indexOf(b.dataset.value) < 0;
      b.setAttribute('aria-pressed', String(state[b.dataset.group] === b.dataset.value));
    });
    var M = G.models[state.model], maps = M.maps[state.method][state.layer], energy = M.energy[state.method][state.layer];
    var total = 0;
    root.querySelectorAll('.tile').forEach(function (tile, i) {
      tile.querySelector('img.heat').src = 'data:image/png;base64,' + maps[i];
      var cap = caption(M, i, energy[i]);
      tile.replaceChild(cap, tile.querySelector('.cap'));
      tile.classList.toggle('flipped', M.flipped[i]);
      tile.title = cap.innerText.replace(/\n/g, ' \u00b7 ');
      total += energy[i];
    });
    var flips = M.flipped.filter(function (x) { return x; }).length;
    var method = root.querySelector('button[data-group="method"][aria-pressed="true"]').textContent;
    document.getElementById('g-summary').textContent = state.model + ' model, ' + method + ' at ' + state.layer +
      ': mean energy in the patch box over these images ' + (total / energy.length).toFixed(3) + ' (uniform ' +
      uniform.toFixed(3) + '); the patch flipped ' + flips + ' of ' + M.flipped.length + ' to ' + G.target + '.';
  }
  root.addEventListener('click', function (e) {
    var b = e.target.closest('button[data-group]');
    if (!b || b.disabled) return;
    state[b.dataset.group] = b.dataset.value;
    if (b.dataset.group === 'layer' && G.layers[state.method].length > 1) camLayer = b.dataset.value;
    render();
  });
  document.getElementById('g-opacity').addEventListener('input', function (e) {
    root.style.setProperty('--heat-opacity', e.target.value / 100);
  });
  render();
})();

// One small facade over hls.js and dash.js, used by the demo page and driven
// by the browser tests through `window.vod`: open a stream, list and force
// rungs, and read what the player and the <video> element really did.
'use strict';

(function () {
  const now = () => performance.now();

  function hostOf(url) {
    try {
      return new URL(url, location.href).host;
    } catch {
      return null;
    }
  }

  /** Fresh per-session state: everything the checks read. */
  function newState() {
    return {
      kind: null,
      src: null,
      openedAt: null,
      startupMs: null,
      fatal: null,
      errors: [],
      heightsRendered: [],
      fragHosts: [],
      stalls: [],
      waitingSince: null,
      pathway: null,
      steeringPolls: 0,
      pathwayPriority: null,
      videoError: null,
    };
  }

  const vod = {
    video: null,
    player: null,
    state: newState(),

    /**
     * Plays `src` with `kind` ('hls' | 'dash') at `rate` (default 1);
     * `opts.maxBufferS` caps how far ahead the player buffers.
     */
    open(kind, src, rate, opts = {}) {
      this.close();
      const video = document.getElementById('video');
      this.video = video;
      const st = newState();
      this.state = st;
      st.kind = kind;
      st.src = src;
      st.openedAt = now();
      video.muted = true;
      video.autoplay = true;
      video.playbackRate = rate || 1;
      video.defaultPlaybackRate = rate || 1;
      this._watchVideo(video, st);
      if (kind === 'hls') this._openHls(video, src, st, opts);
      else if (kind === 'dash') this._openDash(video, src, st, rate || 1, opts);
      else throw new Error(`unknown player kind ${kind}`);
    },

    _watchVideo(video, st) {
      const onFirstFrame = () => {
        if (st.startupMs === null && vod.state === st) st.startupMs = Math.round(now() - st.openedAt);
      };
      if ('requestVideoFrameCallback' in video) video.requestVideoFrameCallback(onFirstFrame);
      else video.addEventListener('playing', onFirstFrame, { once: true });
      this._onWaiting = () => {
        if (st.startupMs !== null && st.waitingSince === null && !video.seeking) st.waitingSince = now();
      };
      this._onPlaying = () => {
        if (st.waitingSince !== null) {
          st.stalls.push({ at: video.currentTime, ms: Math.round(now() - st.waitingSince) });
          st.waitingSince = null;
        }
      };
      this._onResize = () => {
        const h = video.videoHeight;
        if (h && st.heightsRendered[st.heightsRendered.length - 1] !== h) st.heightsRendered.push(h);
      };
      this._onError = () => {
        const e = video.error;
        st.videoError = e ? `media error ${e.code}: ${e.message}` : 'media error';
      };
      video.addEventListener('waiting', this._onWaiting);
      video.addEventListener('playing', this._onPlaying);
      video.addEventListener('resize', this._onResize);
      video.addEventListener('error', this._onError);
    },

    _fragLoaded(st, url, pathway) {
      const host = hostOf(url);
      const last = st.fragHosts[st.fragHosts.length - 1];
      if (!last || last.host !== host) st.fragHosts.push({ host, pathway: pathway ?? null, at: Math.round(now() - st.openedAt) });
    },

    _openHls(video, src, st, opts) {
      if (!window.Hls || !Hls.isSupported()) throw new Error('hls.js is not loaded or MSE is missing');
      const config = { enableWorker: true, capLevelToPlayerSize: false, startLevel: -1 };
      // hls.js's own account of pathway and track changes goes to the console (the tests attach it).
      const keep = /pathway|steering|audio track|switching to level/i;
      const pass = (f) => (...a) => {
        if (keep.test(a.join(' '))) f(...a);
      };
      config.debug = { trace() {}, debug() {}, log: pass(console.log), info: pass(console.info), warn: console.warn, error: console.error };
      if (opts.maxBufferS) Object.assign(config, { maxBufferLength: opts.maxBufferS, maxMaxBufferLength: opts.maxBufferS });
      const hls = new Hls(config);
      this.player = hls;
      hls.on(Hls.Events.ERROR, (_e, d) => {
        const url = d.url ?? d.frag?.url ?? d.context?.url;
        const msg = `${d.type}/${d.details}${d.fatal ? ' (fatal)' : ''}${d.response ? ` HTTP ${d.response.code}` : ''}${url ? ` ${url}` : ''}`;
        st.errors.push(msg);
        if (d.fatal) st.fatal = msg;
      });
      hls.on(Hls.Events.FRAG_LOADED, (_e, d) => {
        if (d.frag.type === 'main') this._fragLoaded(st, d.frag.url, hls.levels[d.frag.level]?.pathwayId);
      });
      hls.on(Hls.Events.STEERING_MANIFEST_LOADED, (_e, d) => {
        st.steeringPolls += 1;
        st.pathwayPriority = d.steeringManifest?.['PATHWAY-PRIORITY'] ?? null;
      });
      hls.loadSource(src);
      hls.attachMedia(video);
      hls.on(Hls.Events.MANIFEST_PARSED, () => {
        video.play().catch((e) => st.errors.push(`play(): ${e.message}`));
      });
    },

    _openDash(video, src, st, rate, opts) {
      if (!window.dashjs) throw new Error('dash.js is not loaded');
      const p = dashjs.MediaPlayer().create();
      this.player = p;
      p.updateSettings({ debug: { logLevel: dashjs.Debug.LOG_LEVEL_WARNING } });
      if (opts.maxBufferS) {
        const b = opts.maxBufferS;
        p.updateSettings({ streaming: { buffer: { bufferTimeAtTopQuality: b, bufferTimeAtTopQualityLongForm: b, bufferTimeDefault: b } } });
      }
      const ev = dashjs.MediaPlayer.events;
      // Segment and init-segment download failures (after dash.js's retries) are recoverable:
      // dash.js moves to another BaseURL / service location. A stream that cannot recover
      // stops advancing, which the checks catch by their deadlines.
      const E = dashjs.MediaPlayer.errors || {};
      const recoverable = new Set(
        [E.FRAGMENT_LOADER_LOADING_FAILURE_ERROR_CODE, E.DOWNLOAD_ERROR_ID_CONTENT_CODE, E.DOWNLOAD_ERROR_ID_INITIALIZATION_CODE].filter(
          (c) => c !== undefined,
        ),
      );
      p.on(ev.ERROR, (e) => {
        const err = e.error || {};
        const msg = `dash error ${err.code ?? ''}: ${err.message ?? JSON.stringify(err)}`;
        st.errors.push(msg);
        if (!recoverable.has(err.code)) st.fatal = msg;
      });
      p.on(ev.PLAYBACK_ERROR, (e) => {
        const msg = `dash playback error: ${e.error?.message ?? e.error ?? ''}`;
        st.errors.push(msg);
        st.fatal = msg;
      });
      p.on(ev.FRAGMENT_LOADING_COMPLETED, (e) => {
        const r = e.request;
        if (r && r.mediaType === 'video' && r.type === 'MediaSegment') this._fragLoaded(st, r.url, r.serviceLocation);
      });
      if (ev.CONTENT_STEERING_REQUEST_COMPLETED) {
        p.on(ev.CONTENT_STEERING_REQUEST_COMPLETED, () => {
          st.steeringPolls += 1;
        });
      }
      p.initialize(video, src, true);
      p.setPlaybackRate(rate);
    },

    /** The video rungs the player knows, lowest first: `{ index, id, width, height, bitrate }`. */
    levels() {
      const st = this.state;
      if (!this.player) return [];
      let list = [];
      if (st.kind === 'hls') {
        list = (this.player.levels || []).map((l, index) => ({
          index,
          id: String(index),
          width: l.width,
          height: l.height,
          bitrate: l.bitrate,
        }));
      } else {
        list = (this.player.getRepresentationsByType('video') || []).map((r) => ({
          index: r.absoluteIndex ?? r.index,
          id: r.id,
          width: r.width,
          height: r.height,
          bitrate: r.bandwidth,
        }));
      }
      return list.sort((a, b) => a.bitrate - b.bitrate);
    },

    /** Forces one rung (ABR off) by its `id` from `levels()`. */
    force(id) {
      const st = this.state;
      if (st.kind === 'hls') {
        const hls = this.player;
        const n = Number(id);
        // Already playing and loading that rung: pin it without the buffer flush of an
        // immediate switch (hls.js can stall after flushing for a switch to the same level).
        if (hls.currentLevel === n && hls.loadLevel === n) hls.loadLevel = n;
        else hls.currentLevel = n;
      } else {
        this.player.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: false } } } });
        this.player.setRepresentationForTypeById('video', id, true);
      }
    },

    /** Gives the choice back to the player's ABR. */
    auto() {
      if (this.state.kind === 'hls') this.player.currentLevel = -1;
      else this.player.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: true } } } });
    },

    /** Rung the player is on now (or null). */
    currentLevel() {
      const st = this.state;
      if (!this.player) return null;
      if (st.kind === 'hls') {
        const l = this.player.levels?.[this.player.currentLevel];
        return l ? { height: l.height, bitrate: l.bitrate } : null;
      }
      const r = this.player.getCurrentRepresentationForType('video');
      return r ? { height: r.height, bitrate: r.bandwidth } : null;
    },

    /** Seconds buffered ahead of the play position. */
    bufferAhead() {
      const v = this.video;
      if (!v) return 0;
      for (let i = 0; i < v.buffered.length; i++) {
        if (v.buffered.start(i) <= v.currentTime + 0.1 && v.currentTime <= v.buffered.end(i)) {
          return v.buffered.end(i) - v.currentTime;
        }
      }
      return 0;
    },

    /** A snapshot of everything the checks and the stats panel read. */
    stats() {
      const v = this.video;
      const st = this.state;
      const q = v && v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
      const last = st.fragHosts[st.fragHosts.length - 1];
      return {
        kind: st.kind,
        currentTime: v ? v.currentTime : 0,
        duration: v && Number.isFinite(v.duration) ? v.duration : null,
        paused: v ? v.paused : true,
        ended: v ? v.ended : false,
        seeking: v ? v.seeking : false,
        playbackRate: v ? v.playbackRate : 0,
        videoWidth: v ? v.videoWidth : 0,
        videoHeight: v ? v.videoHeight : 0,
        decodedFrames: q ? q.totalVideoFrames : 0,
        droppedFrames: q ? q.droppedVideoFrames : 0,
        bufferAhead: this.bufferAhead(),
        level: this.currentLevel(),
        startupMs: st.startupMs,
        fatal: st.fatal || st.videoError,
        errors: st.errors.slice(-20),
        heightsRendered: st.heightsRendered.slice(),
        fragHosts: st.fragHosts.slice(),
        edge: last ? last.host : null,
        pathway: last ? last.pathway : null,
        stalls: st.stalls.concat(
          st.waitingSince !== null ? [{ at: v.currentTime, ms: Math.round(now() - st.waitingSince), open: true }] : [],
        ),
        steeringPolls: st.steeringPolls,
        pathwayPriority: st.pathwayPriority,
      };
    },

    seek(t) {
      this.video.currentTime = t;
    },

    close() {
      const v = this.video;
      if (v) {
        v.removeEventListener('waiting', this._onWaiting);
        v.removeEventListener('playing', this._onPlaying);
        v.removeEventListener('resize', this._onResize);
        v.removeEventListener('error', this._onError);
      }
      if (this.player) {
        try {
          if (this.state.kind === 'hls') this.player.destroy();
          else this.player.destroy();
        } catch {
          // a player that failed half-way may throw on destroy; the page is reset either way
        }
      }
      this.player = null;
    },
  };

  window.vod = vod;
})();

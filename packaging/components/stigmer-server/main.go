// stigmer-server is the reference job service embedded in stigmer: a small
// HTTP API on $STIGMER_LISTEN (127.0.0.1:$PORT, 127.0.0.1:7234 by default) that queues
// workflow and agent jobs, leases them to runners (a job whose runner posts
// no result within $STIGMER_JOB_LEASE goes back to the queue) and keeps every
// job on disk under $STIGMER_DATA_DIR so that jobs survive restarts.
//
//	GET  /healthz                  200 ok
//	POST /v1/jobs                  {"kind","input"} -> 201 {"id"}
//	GET  /v1/jobs[?kind=&status=]  200 [job...]
//	GET  /v1/jobs/{id}             200 job | 404
//	POST /v1/jobs/claim            {"kind"} -> 200 job (now running) | 204
//	POST /v1/jobs/{id}/result      {"status":"done"|"failed","output"} -> 200 job
//
// Stdlib only; builds with Go 1.19 (no method patterns in ServeMux).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Keep in step with components.toml (build.sh checks).
const version = "0.1.0"

const maxBody = 8 << 20

// A claimed job whose runner posts no result within this goes back to the
// queue (Store.Claim). Long enough for the reference jobs (well under a
// second) many times over; STIGMER_JOB_LEASE overrides it.
const defaultLease = 5 * time.Minute

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("stigmer-server: ")
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "--version", "version":
			fmt.Println("stigmer-server", version)
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: stigmer-server [--version]\n"+
				"  env STIGMER_LISTEN (host:port to listen on, default 127.0.0.1:$PORT;\n"+
				"  0.0.0.0:PORT for every interface), PORT (default 7234), STIGMER_DATA_DIR (default ./data),\n"+
				"  STIGMER_JOB_LEASE (how long a claim holds a job, default %s)\n", defaultLease)
			os.Exit(2)
		}
	}
	if err := run(); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run() error {
	// Loopback unless told otherwise: in a container or pod it must be
	// 0.0.0.0:PORT for other containers to reach it (stigmer deploy says so).
	addr := envOr("STIGMER_LISTEN", net.JoinHostPort("127.0.0.1", envOr("PORT", "7234")))
	dataDir := envOr("STIGMER_DATA_DIR", "data")
	lease, err := time.ParseDuration(envOr("STIGMER_JOB_LEASE", defaultLease.String()))
	if err != nil || lease <= 0 {
		return fmt.Errorf("STIGMER_JOB_LEASE=%q is not a positive duration such as 30s or 5m", os.Getenv("STIGMER_JOB_LEASE"))
	}
	store, err := OpenStore(dataDir, lease)
	if err != nil {
		return err
	}
	// Listen before serving so a busy port is reported at once, not inside
	// the serve goroutine.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another stigmer-server running? set STIGMER_LISTEN or PORT)", addr, err)
	}
	srv := &http.Server{
		Handler:           logRequests(newAPI(store)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Printf("version %s listening on http://%s, data in %s, job lease %s", version, ln.Addr(), dataDir, lease)
	// The socket is bound and served: connections from now on are answered.
	sdNotify("READY=1")

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Printf("shutting down")
	sdNotify("STOPPING=1")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Printf("stopped")
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

type api struct{ store *Store }

func newAPI(store *Store) http.Handler {
	a := &api{store: store}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", a.healthz)
	mux.HandleFunc("/v1/jobs", a.jobs)
	mux.HandleFunc("/v1/jobs/", a.jobPath)
	return mux
}

func (a *api) healthz(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok")
}

// /v1/jobs: create (POST) or list (GET).
func (a *api) jobs(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		writeJSON(w, http.StatusOK, a.store.List(q.Get("kind"), q.Get("status")))
	case http.MethodPost:
		var req struct {
			Kind  string `json:"kind"`
			Input string `json:"input"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		if !validKinds[req.Kind] {
			writeError(w, http.StatusBadRequest, `kind must be "workflow" or "agent"`)
			return
		}
		j, err := a.store.Create(req.Kind, req.Input)
		if err != nil {
			serverError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"id": j.ID})
	default:
		allow(w, r, http.MethodGet, http.MethodPost)
	}
}

// /v1/jobs/claim, /v1/jobs/{id}, /v1/jobs/{id}/result.
func (a *api) jobPath(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/jobs/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "claim":
		a.claim(w, r)
	case len(parts) == 1 && parts[0] != "":
		if !allow(w, r, http.MethodGet) {
			return
		}
		j, ok := a.store.Get(parts[0])
		if !ok {
			writeError(w, http.StatusNotFound, "no job "+parts[0])
			return
		}
		writeJSON(w, http.StatusOK, j)
	case len(parts) == 2 && parts[0] != "" && parts[1] == "result":
		a.result(w, r, parts[0])
	default:
		writeError(w, http.StatusNotFound, "not found")
	}
}

func (a *api) claim(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodPost) {
		return
	}
	var req struct {
		Kind string `json:"kind"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	if !validKinds[req.Kind] {
		writeError(w, http.StatusBadRequest, `kind must be "workflow" or "agent"`)
		return
	}
	j, ok, err := a.store.Claim(req.Kind)
	switch {
	case err != nil:
		serverError(w, err)
	case !ok:
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSON(w, http.StatusOK, j)
	}
}

func (a *api) result(w http.ResponseWriter, r *http.Request, id string) {
	if !allow(w, r, http.MethodPost) {
		return
	}
	var req struct {
		Status string `json:"status"`
		Output string `json:"output"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	if req.Status != statusDone && req.Status != statusFailed {
		writeError(w, http.StatusBadRequest, `status must be "done" or "failed"`)
		return
	}
	j, err := a.store.Finish(id, req.Status, req.Output)
	switch {
	case errors.Is(err, errNotFound):
		writeError(w, http.StatusNotFound, "no job "+id)
	case errors.Is(err, errFinished):
		writeError(w, http.StatusConflict, "job "+id+" is already "+j.Status)
	case err != nil:
		serverError(w, err)
	default:
		writeJSON(w, http.StatusOK, j)
	}
}

func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed")
	return false
}

func readJSON(w http.ResponseWriter, r *http.Request, v interface{}) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad JSON body: trailing data")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func serverError(w http.ResponseWriter, err error) {
	log.Printf("error: %v", err)
	writeError(w, http.StatusInternalServerError, err.Error())
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// logRequests logs one line per request, except idle claim polls.
func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		if rec.code == http.StatusNoContent && r.URL.Path == "/v1/jobs/claim" {
			return // idle runners poll several times a second
		}
		log.Printf("%s %s %d %s", r.Method, r.URL.RequestURI(), rec.code,
			time.Since(start).Round(time.Microsecond))
	})
}

// sdNotify sends STATE to the service manager's $NOTIFY_SOCKET (the sd_notify
// protocol of systemd and of `stigmer server`); without one it does nothing.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Printf("notify %s: %v", state, err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("notify %s: %v", state, err)
	}
}

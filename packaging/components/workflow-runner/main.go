// workflow-runner is the reference workflow worker embedded in stigmer: it
// claims "workflow" jobs from stigmer-server ($STIGMER_SERVER_URL), runs each
// one through `agent-runner run` (job input on stdin, stdout as the output)
// and posts the result back.
//
// agent-runner is found on PATH on purpose: under `stigmer server` the
// supervisor puts a directory of symlinks to stigmer first on PATH, so this
// reaches the agent-runner embedded in the same binary.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Keep in step with components.toml (build.sh checks).
const version = "0.1.0"

const (
	idlePoll   = 200 * time.Millisecond
	maxBackoff = 5 * time.Second
	// How long a job already running may go on after SIGTERM before it is
	// killed and reported failed.
	shutdownGrace = 5 * time.Second
	maxErrOutput  = 64 << 10
)

type job struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`
	Input string `json:"input"`
}

type client struct {
	base string
	http *http.Client
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("workflow-runner: ")
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "--version", "version":
			fmt.Println("workflow-runner", version)
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: workflow-runner [--version]\n"+
				"  env STIGMER_SERVER_URL (default http://127.0.0.1:7234)\n")
			os.Exit(2)
		}
	}
	base := strings.TrimRight(os.Getenv("STIGMER_SERVER_URL"), "/")
	if base == "" {
		base = "http://127.0.0.1:7234"
	}
	c := &client{base: base, http: &http.Client{Timeout: 30 * time.Second}}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Printf("version %s polling %s for workflow jobs", version, base)
	c.loop(ctx)
	log.Printf("stopped")
}

func (c *client) loop(ctx context.Context) {
	backoff := idlePoll
	down := false
	ready := false
	for ctx.Err() == nil {
		j, err := c.claim(ctx)
		if err == nil && !ready {
			// The server answered a claim: this runner really works on jobs now.
			sdNotify("READY=1")
			ready = true
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// The server may be restarting: say so once, then retry
			// quietly with a growing delay.
			if !down {
				log.Printf("server unreachable, retrying: %v", err)
				down = true
			}
			sleep(ctx, backoff)
			if backoff *= 2; backoff > maxBackoff {
				backoff = maxBackoff
			}
			continue
		}
		if down {
			log.Printf("server reachable again")
			down = false
		}
		backoff = idlePoll
		if j == nil {
			sleep(ctx, idlePoll)
			continue
		}
		c.process(ctx, j)
	}
}

func (c *client) process(ctx context.Context, j *job) {
	start := time.Now()
	log.Printf("job %s: running agent-runner", j.ID)
	status, output := runAgent(ctx, j.Input)
	log.Printf("job %s: %s in %s", j.ID, status, time.Since(start).Round(time.Millisecond))
	c.report(ctx, j.ID, status, output)
}

// runAgent runs `agent-runner run` with input on stdin and returns the job's
// status and output. Once ctx is cancelled (SIGTERM) the run gets
// shutdownGrace to finish before it is killed.
func runAgent(ctx context.Context, input string) (status, output string) {
	path, err := exec.LookPath("agent-runner")
	if err != nil {
		return "failed", fmt.Sprintf("agent-runner not found on PATH: %v", err)
	}
	cmd := exec.Command(path, "run")
	cmd.Args[0] = "agent-runner" // argv[0] is what a multicall binary dispatches on
	cmd.Stdin = strings.NewReader(input)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "failed", fmt.Sprintf("cannot start %s: %v", path, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		select {
		case err = <-done:
		case <-time.After(shutdownGrace):
			cmd.Process.Kill()
			err = <-done
		}
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > maxErrOutput {
			msg = msg[len(msg)-maxErrOutput:]
		}
		return "failed", fmt.Sprintf("agent-runner %s (%s): %s", describeExit(err), path, msg)
	}
	return "done", strings.TrimRight(stdout.String(), "\n")
}

func describeExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	return err.Error()
}

// report posts a job's result, retrying while the server is unreachable.
// After SIGTERM it tries for a few seconds only; a job whose result is lost
// stays "running" and the server requeues it on its next start.
func (c *client) report(ctx context.Context, id, status, output string) {
	body, _ := json.Marshal(map[string]string{"status": status, "output": output})
	backoff := idlePoll
	deadline := time.Time{}
	for {
		if ctx.Err() != nil && deadline.IsZero() {
			deadline = time.Now().Add(3 * time.Second)
		}
		code, err := c.post(context.Background(), "/v1/jobs/"+id+"/result", body, nil)
		switch {
		case err == nil && code == http.StatusOK:
			return
		case err == nil:
			// 404/409: the server no longer wants this result (job
			// removed, or finished by another runner after a requeue).
			log.Printf("job %s: result not accepted: HTTP %d", id, code)
			return
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			log.Printf("job %s: giving up on posting the result: %v", id, err)
			return
		}
		if ctx.Err() == nil {
			sleep(ctx, backoff)
		} else {
			time.Sleep(backoff)
		}
		if backoff *= 2; backoff > maxBackoff {
			backoff = maxBackoff
		}
	}
}

// claim returns the next workflow job, or nil when the queue is empty.
func (c *client) claim(ctx context.Context) (*job, error) {
	var j job
	code, err := c.post(ctx, "/v1/jobs/claim", []byte(`{"kind":"workflow"}`), &j)
	switch {
	case err != nil:
		return nil, err
	case code == http.StatusNoContent:
		return nil, nil
	case code == http.StatusOK:
		return &j, nil
	default:
		return nil, fmt.Errorf("claim: HTTP %d", code)
	}
}

func (c *client) post(ctx context.Context, path string, body []byte, out interface{}) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return 0, fmt.Errorf("%s: bad response: %w", path, err)
		}
	}
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
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

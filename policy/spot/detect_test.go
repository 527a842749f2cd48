package spot

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestDetect(t *testing.T) {
	_, aws := newFakeIMDS(t)
	_, gcp := newFakeGCE(t)
	_, azure := newFakeAzure(t)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello")) // 200 to anything, but none of the three
	}))
	t.Cleanup(plain.Close)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hang.Close)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()

	for _, tc := range []struct{ name, url, want string }{
		{"aws", aws.URL, AWS},
		{"gcp", gcp.URL, GCP},
		{"azure", azure.URL, Azure},
		{"something else", plain.URL, None},
		{"hanging", hang.URL, None},
		{"refused", deadURL, None},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(tc.url)
			start := time.Now()
			got, err := Detect(context.Background(), cfg)
			if err != nil || got != tc.want {
				t.Fatalf("Detect = %q, %v; want %q", got, err, tc.want)
			}
			if d := time.Since(start); d > cfg.DetectTimeout+time.Second {
				t.Fatalf("Detect took %v, DetectTimeout %v", d, cfg.DetectTimeout)
			}
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Detect(ctx, testConfig(hang.URL)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Detect err = %v", err)
	}
}

func TestOpen(t *testing.T) {
	_, gcp := newFakeGCE(t)
	cfg := testConfig(gcp.URL)
	src, err := Open(context.Background(), cfg)
	if err != nil || src.Name() != GCP {
		t.Fatalf("Open(auto) = %v, %v; want the gcp watcher", src, err)
	}
	cfg.Provider = Azure // explicit wins, no probing
	if src, err := Open(context.Background(), cfg); err != nil || src.Name() != Azure {
		t.Fatalf("Open(azure) = %v, %v", src, err)
	}
	cfg.Provider = None
	if _, err := Open(context.Background(), cfg); !errors.Is(err, ErrNoProvider) {
		t.Fatalf("Open(none) err = %v, want ErrNoProvider", err)
	}
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hang.Close)
	if _, err := Open(context.Background(), testConfig(hang.URL)); !errors.Is(err, ErrNoProvider) {
		t.Fatalf("Open(auto, nothing) err = %v, want ErrNoProvider", err)
	}
	cfg.Provider = "ibm"
	if _, err := Open(context.Background(), cfg); err == nil {
		t.Fatal("bad provider accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	for _, tc := range []struct {
		mod  func(*Config)
		want []string
	}{
		{func(c *Config) { c.Provider = "ibm" }, []string{"spot.provider", "ibm", "auto, aws, gcp, azure, none"}},
		{func(c *Config) { c.Endpoint = "169.254.169.254" }, []string{"spot.endpoint", "169.254.169.254", "http"}},
		{func(c *Config) { c.Endpoint = "ftp://x" }, []string{"spot.endpoint", "ftp://x"}},
		{func(c *Config) { c.PollInterval = 5 * time.Second }, []string{"spot.poll_interval", "5s", "2s"}},
		{func(c *Config) { c.PollInterval = 0 }, []string{"spot.poll_interval", "0s", "10ms"}},
		{func(c *Config) { c.RequestTimeout = 0 }, []string{"RequestTimeout"}},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("want an error mentioning %q", tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
	}
	c := DefaultConfig()
	c.Provider, c.Endpoint, c.PollInterval = AWS, "http://127.0.0.1:8080", 500*time.Millisecond
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

package spot

import (
	"context"
	"encoding/json"
	"net/http"
)

// Detect probes the AWS, GCP and Azure metadata services at cfg.Endpoint in
// parallel and returns the first that answers as itself (in the order aws,
// gcp, azure when several do), or None. It never takes longer than
// cfg.DetectTimeout; the only error is ctx ending.
//
// Probes: AWS answers PUT /latest/api/token with a token and echoes the
// X-aws-ec2-metadata-token-ttl-seconds header; GCP answers
// /computeMetadata/v1/ with the header Metadata-Flavor: Google; Azure
// answers the scheduled-events document (with DocumentIncarnation) to a Metadata: true request.
func Detect(parent context.Context, cfg Config) (string, error) {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithTimeout(parent, cfg.DetectTimeout)
	defer cancel()
	probes := []struct {
		name  string
		probe func(context.Context, Config) bool
	}{{AWS, probeAWS}, {GCP, probeGCP}, {Azure, probeAzure}}
	results := make([]chan bool, len(probes))
	for i, p := range probes {
		results[i] = make(chan bool, 1)
		go func() { results[i] <- p.probe(ctx, cfg) }()
	}
	found := None
	for i, p := range probes { // every probe ends by DetectTimeout
		if <-results[i] && found == None {
			found = p.name
		}
	}
	if found == None && parent.Err() != nil {
		return None, parent.Err()
	}
	cfg.Logger.Info("cloud metadata detection", "provider", found, "endpoint", cfg.Endpoint)
	return found, nil
}

func probe(ctx context.Context, cfg Config, method, path string, hdr map[string]string) ([]byte, http.Header, bool) {
	req, err := http.NewRequest(method, cfg.Endpoint+path, nil)
	if err != nil {
		return nil, nil, false
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	b, h, err := do(ctx, cfg.Client, cfg.DetectTimeout, req)
	return b, h, err == nil
}

func probeAWS(ctx context.Context, cfg Config) bool {
	b, h, ok := probe(ctx, cfg, http.MethodPut, awsTokenPath, map[string]string{awsTokenTTLHeader: "60"})
	return ok && len(b) > 0 && h.Get(awsTokenTTLHeader) != ""
}

func probeGCP(ctx context.Context, cfg Config) bool {
	_, h, ok := probe(ctx, cfg, http.MethodGet, gcpPrefix, map[string]string{gcpFlavorHeader: gcpFlavor})
	return ok && h.Get(gcpFlavorHeader) == gcpFlavor
}

func probeAzure(ctx context.Context, cfg Config) bool {
	b, _, ok := probe(ctx, cfg, http.MethodGet, azurePath, map[string]string{azureHeader: "true"})
	var doc map[string]json.RawMessage
	return ok && json.Unmarshal(b, &doc) == nil && doc["DocumentIncarnation"] != nil
}

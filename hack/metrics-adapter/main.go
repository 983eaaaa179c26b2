// Command metrics-adapter serves one custom metric of the local cluster, the Pods metric
// modeldeploy_requests_per_second, at custom.metrics.k8s.io behind the API server's aggregation
// layer, so that a HorizontalPodAutoscaler rendered from spec.autoscaling.targetRequestsPerSecondPerPod
// has something to read. Each value is a PromQL rate over the server pods' own counter,
//
//	sum by (pod) (rate(modeldeploy_requests_total{namespace="<ns>"}[<window>]))
//
// which is what a user's prometheus-adapter rule computes (the README gives that rule). The module
// proxy serves no prometheus-adapter, so the harness runs this instead; it is built on the same
// library prometheus-adapter is built on (sigs.k8s.io/custom-metrics-apiserver), and it answers
// from the same Prometheus the operator queries. It is part of the test harness, not of the product.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	apierr "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"

	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider/helpers"
)

// Metric is the operator's autoscale.RPS_METRIC; Counter is the server's metrics.REQUESTS.
const (
	Metric  = "modeldeploy_requests_per_second"
	Counter = "modeldeploy_requests_total"
)

var podsResource = schema.GroupResource{Resource: "pods"}

type rpsProvider struct {
	client     dynamic.Interface
	mapper     apimeta.RESTMapper
	prometheus string
	window     string
	http       *http.Client
}

func (p *rpsProvider) ListAllMetrics() []provider.CustomMetricInfo {
	return []provider.CustomMetricInfo{{GroupResource: podsResource, Namespaced: true, Metric: Metric}}
}

func (p *rpsProvider) served(info provider.CustomMetricInfo) error {
	if info.Metric != Metric || info.GroupResource != podsResource || !info.Namespaced {
		return provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	return nil
}

// rates asks Prometheus for the requests per second of every pod of a namespace that has the counter.
func (p *rpsProvider) rates(ctx context.Context, namespace string) (map[string]float64, time.Time, error) {
	q := fmt.Sprintf(`sum by (pod) (rate(%s{namespace=%q}[%s]))`, Counter, namespace, p.window)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.prometheus+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, time.Time{}, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, time.Time{}, apierr.NewServiceUnavailable(fmt.Sprintf("prometheus: %v", err))
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, time.Time{}, apierr.NewServiceUnavailable(fmt.Sprintf("prometheus answered %s: %v", resp.Status, err))
	}
	if body.Status != "success" {
		return nil, time.Time{}, apierr.NewServiceUnavailable(fmt.Sprintf("prometheus: %s: %s", q, body.Error))
	}
	out := map[string]float64{}
	at := time.Now()
	for _, r := range body.Data.Result {
		ts, ok1 := r.Value[0].(float64)
		s, ok2 := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if !ok1 || !ok2 || err != nil {
			return nil, time.Time{}, apierr.NewInternalError(fmt.Errorf("prometheus sample %v of %s", r.Value, q))
		}
		out[r.Metric["pod"]] = v
		at = time.Unix(0, int64(ts*1e9))
	}
	return out, at, nil
}

func (p *rpsProvider) value(name types.NamespacedName, info provider.CustomMetricInfo, rps float64, at time.Time) (custom_metrics.MetricValue, error) {
	ref, err := helpers.ReferenceFor(p.mapper, name, info)
	if err != nil {
		return custom_metrics.MetricValue{}, err
	}
	return custom_metrics.MetricValue{
		DescribedObject: ref,
		Metric:          custom_metrics.MetricIdentifier{Name: info.Metric},
		Timestamp:       metav1.NewTime(at),
		Value:           *resource.NewMilliQuantity(int64(rps*1000+0.5), resource.DecimalSI),
	}, nil
}

func (p *rpsProvider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, _ labels.Selector) (*custom_metrics.MetricValue, error) {
	if err := p.served(info); err != nil {
		return nil, err
	}
	rates, at, err := p.rates(ctx, name.Namespace)
	if err != nil {
		return nil, err
	}
	rps, ok := rates[name.Name]
	if !ok {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	v, err := p.value(name, info, rps, at)
	return &v, err
}

// GetMetricBySelector answers for the pods the selector matches now; a pod Prometheus has no
// series for yet (just started, not scraped) is left out, as prometheus-adapter leaves it out.
func (p *rpsProvider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, _ labels.Selector) (*custom_metrics.MetricValueList, error) {
	if err := p.served(info); err != nil {
		return nil, err
	}
	names, err := helpers.ListObjectNames(p.mapper, p.client, namespace, selector, info)
	if err != nil {
		return nil, err
	}
	rates, at, err := p.rates(ctx, namespace)
	if err != nil {
		return nil, err
	}
	items := make([]custom_metrics.MetricValue, 0, len(names))
	for _, n := range names {
		rps, ok := rates[n]
		if !ok {
			continue
		}
		v, err := p.value(types.NamespacedName{Namespace: namespace, Name: n}, info, rps, at)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
	}
	return &custom_metrics.MetricValueList{Items: items}, nil
}

type adapter struct {
	basecmd.AdapterBase
	prometheus string
	window     string
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()
	a := &adapter{}
	a.Name = "modeldeploy-metrics-adapter"
	a.Flags().StringVar(&a.prometheus, "prometheus-url", "", "Prometheus' base URL (http://host:port)")
	a.Flags().StringVar(&a.window, "rate-window", "1m", "the range of the rate() each value is computed over")
	logs.AddFlags(a.Flags())
	if err := a.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("flags: %v", err)
	}
	if a.prometheus == "" {
		klog.Fatalf("--prometheus-url is required")
	}
	client, err := a.DynamicClient()
	if err != nil {
		klog.Fatalf("dynamic client: %v", err)
	}
	mapper, err := a.RESTMapper()
	if err != nil {
		klog.Fatalf("REST mapper: %v", err)
	}
	a.WithCustomMetrics(&rpsProvider{client: client, mapper: mapper, prometheus: a.prometheus, window: a.window,
		http: &http.Client{Timeout: 5 * time.Second}})
	if err := a.Run(context.Background()); err != nil {
		klog.Fatalf("run: %v", err)
	}
}

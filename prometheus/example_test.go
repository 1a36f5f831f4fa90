package tenantpgprom_test

import (
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tenantpg/tenantpg"
	tenantpgprom "github.com/tenantpg/tenantpg/prometheus"
)

// Register a collector for a *sql.DB opened with the tenantpg driver and
// serve it on /metrics. The 20 most active tenants get their own tenant
// label value; all others are summed under "__other__".
func ExampleNewDB() {
	db, err := sql.Open("tenantpg",
		"postgres://app:secret@pooler.internal:6543/postgres?tenant_user={user}.{tenant}&tenant_max_conns=50")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	collector, err := tenantpgprom.NewDB(db, tenantpgprom.Options{TopN: 20})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// go http.ListenAndServe(":9090", mux)

	// Before the first query nothing is open; only "__other__" is listed.
	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		switch name := mf.GetName(); name {
		case "tenantpg_budget_max_connections", "tenantpg_budget_open_connections", "tenantpg_tenant_pools":
			for _, m := range mf.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				fmt.Printf("%s{%s} %v\n", name, strings.Join(labels, ","), m.GetGauge().GetValue())
			}
		}
	}
	// Output:
	// tenantpg_budget_max_connections{} 50
	// tenantpg_budget_open_connections{} 0
	// tenantpg_tenant_pools{tenant="__other__"} 0
}

// Two connectors in one registry are told apart by a constant label.
func ExampleNew() {
	open := func(dsn string) *tenantpg.Connector {
		cfg, err := tenantpg.ParseConfig(dsn)
		if err != nil {
			log.Fatal(err)
		}
		c, err := tenantpg.NewConnector(cfg)
		if err != nil {
			log.Fatal(err)
		}
		return c
	}
	orders := open("postgres://app:secret@pooler.internal:6543/postgres?tenant_user={user}.{tenant}")
	defer orders.Close()
	billing := open("postgres://app:secret@pgbouncer.internal:6432/app?tenant_database=billing_{tenant}")
	defer billing.Close()

	reg := prometheus.NewRegistry()
	for name, c := range map[string]*tenantpg.Connector{"orders": orders, "billing": billing} {
		collector, err := tenantpgprom.New(c, tenantpgprom.Options{
			TopN:        10,
			ConstLabels: prometheus.Labels{"db": name},
		})
		if err != nil {
			log.Fatal(err)
		}
		reg.MustRegister(collector)
	}
	n, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(n) > 0)
	// Output: true
}

// Structured events: set Config.Logger to any *slog.Logger. tenantpg logs
// pools created and closed and tenants forgotten at level Info, rejected
// tenants and exhausted budget waits at Warn, failed identity checks at
// Error, and budget waits and evictions at Debug (docs/observability.md).
func Example_logger() {
	cfg, err := tenantpg.ParseConfig(
		"postgres://app:secret@pooler.internal:6543/postgres?tenant_user={user}.{tenant}&tenant_max_conns=50")
	if err != nil {
		log.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	db, err := tenantpg.OpenDB(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	collector, err := tenantpgprom.NewDB(db, tenantpgprom.Options{})
	if err != nil {
		log.Fatal(err)
	}
	prometheus.MustRegister(collector)
	// ... serve promhttp.Handler() and use db with tenantpg.WithTenant.
}

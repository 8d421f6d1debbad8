{{/* carpool's alerting rules: the `groups` of a Prometheus rules file. The PrometheusRule
renders them; the chart's tests extract them into a plain rules file for promtool and for a
real Prometheus. docs/observability.md explains each alert. */}}
{{- define "carpool.alertGroups" -}}
{{- $rules := .Values.prometheus.rules -}}
{{- $budget := subf 1.0 $rules.sla.objective -}}
{{- /* One SLO per kind of SLA: the request share over the line is read from the histogram the
line is a p95 of, so both kinds share the objective and the burn rates. */}}
{{- $slas := list
  (dict "alert" "CarpoolEndpointSLABurnRate" "histogram" "carpool_time_to_first_token_seconds"
    "line" "carpool_endpoint_sla_ttft_p95_seconds" "budget" "TTFT"
    "waited" "waited longer for their first token than the SLA allows")
  (dict "alert" "CarpoolEndpointQueueSLABurnRate" "histogram" "carpool_queue_wait_seconds"
    "line" "carpool_endpoint_sla_queue_wait_p95_seconds" "budget" "queue-wait"
    "waited" "waited in the queue, before their prefill began, longer than the SLA allows") }}
- name: carpool.sla
  rules:
  {{- range $kind := $slas }}
  {{- range $rules.sla.burnRates }}
  {{- $bad := mulf $budget .burnRate }}
  {{- if ge $bad 1.0 }}
  {{- fail (printf "prometheus.rules.sla.burnRates %s: burnRate %v spends more than the whole error budget (it must be below 1 / (1 - objective))" .name .burnRate) }}
  {{- end }}
  {{- $q := printf "%.4g" (subf 1.0 $bad) }}
  {{- $quantile := printf "histogram_quantile(%s, sum by (namespace, pool, endpoint, le) (rate(%s_bucket[%%s])))" $q $kind.histogram }}
  {{- $sla := printf "max by (namespace, pool, endpoint) (%s)" $kind.line }}
    - alert: {{ $kind.alert }}{{ .name }}
      # Fires when more than {{ printf "%.4g" (mulf $bad 100.0) }}% of the requests missed the {{ $kind.budget }} target in both
      # windows: the {{ printf "%.4g" (mulf $budget 100.0) }}% error budget spent {{ .burnRate }}x too fast. The share of
      # requests slower than the SLA exceeds x exactly when the (1 - x) quantile does.
      expr: |
        (
          {{ printf $quantile .longWindow }}
          > {{ $sla }}
        )
        and on (namespace, pool, endpoint)
        (
          {{ printf $quantile .shortWindow }}
          > {{ $sla }}
        )
      for: {{ .for }}
      labels:
        severity: {{ .severity }}
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Endpoint {{`{{ $labels.endpoint }}`}} of pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}} is burning its {{ $kind.budget }} error budget {{ .burnRate }}x too fast.
        description: >-
          Over the last {{ .longWindow }} and the last {{ .shortWindow }}, more than {{ printf "%.4g" (mulf $bad 100.0) }}% of the requests
          to endpoint {{`{{ $labels.endpoint }}`}} {{ $kind.waited }}
          (the {{ printf "%.4g" (mulf (subf 1.0 $bad) 100.0) }}th percentile is {{`{{ $value | humanizeDuration }}`}}). At this rate the
          {{ printf "%.4g" (mulf $budget 100.0) }}% error budget is spent {{ .burnRate }} times too fast. Check the pool's
          CapacityLimited and MetricsAvailable conditions and its scaling Events.
        {{- with include "carpool.runbook" (list $ (printf "%s%s" $kind.alert .name)) }}
        runbook_url: {{ . }}
        {{- end }}
  {{- end }}
  {{- end }}
- name: carpool.pool
  rules:
    - alert: CarpoolPoolMetricsUnavailable
      expr: |
        (max by (namespace, pool) (carpool_pool_metrics_available) == 0)
        * on (namespace, pool) group_left (reason)
        max by (namespace, pool, reason) (carpool_pool_metrics_unavailable_reason)
      for: {{ $rules.metricsUnavailableFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: The operator cannot read pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}}'s metrics ({{`{{ $labels.reason }}`}}); it holds replicas and limits.
        description: >-
          The operator's control loop has had no usable metrics for pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}}
          for {{ $rules.metricsUnavailableFor }} ({{`{{ $labels.reason }}`}}{{`{{ if eq $labels.reason "MissingScrapeLabels" }}`}}: Prometheus scrapes the
          workers without the namespace and pool labels; enable the chart's prometheus.workers.podMonitor
          or add the relabel rules{{`{{ else if eq $labels.reason "NoSamples" }}`}}: Prometheus does not scrape the workers{{`{{ else if eq $labels.reason "MetricsStale" }}`}}: the
          workers' samples are older than three control intervals; scrape them more often{{`{{ else if eq $labels.reason "PrometheusUnavailable" }}`}}: the
          operator cannot query Prometheus; check its URL, credentials and CA{{`{{ else if eq $labels.reason "ScrapeFailing" }}`}}: the
          workers' scrapes fail{{`{{ end }}`}}). The pool keeps its current replicas and batch limits until
          metrics return, so it does not follow its load. `kubectl describe inferencepool` shows the
          condition's message, which says what to fix.
        {{- with include "carpool.runbook" (list $ "CarpoolPoolMetricsUnavailable") }}
        runbook_url: {{ . }}
        {{- end }}
    - alert: CarpoolPoolProfileInvalid
      expr: |
        max by (namespace, pool) (carpool_pool_profile_loaded) == 0
      for: {{ $rules.profileInvalidFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}}'s profile ConfigMap is missing or invalid.
        description: >-
          For {{ $rules.profileInvalidFor }} the ConfigMap named in the pool's scaling.profileConfigMap has not held
          a valid profile.json, so the policy scales from measured queue delay alone and cannot
          plan capacity ahead. The pool's ProfileLoaded condition says what is wrong.
        {{- with include "carpool.runbook" (list $ "CarpoolPoolProfileInvalid") }}
        runbook_url: {{ . }}
        {{- end }}
    - alert: CarpoolWorkerMetricsMissing
      expr: |
        max by (namespace, pool, pod) (up{pool!=""}) == 0
      for: {{ $rules.workerMetricsMissingFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Prometheus cannot scrape worker {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} of pool {{`{{ $labels.pool }}`}}.
        description: >-
          Scrapes of the worker pod's /metrics have failed for {{ $rules.workerMetricsMissingFor }}. The
          operator's view of the pool's queue delay misses this pod.
        {{- with include "carpool.runbook" (list $ "CarpoolWorkerMetricsMissing") }}
        runbook_url: {{ . }}
        {{- end }}
    - alert: CarpoolPoolMetricsAbsent
      expr: |
        max by (namespace, pool) (carpool_pool_replicas{state="ready"}) > 0
        unless on (namespace, pool)
        count by (namespace, pool) (up{pool!=""} == 1)
      for: {{ $rules.workerMetricsMissingFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}} has {{`{{ $value }}`}} ready workers and Prometheus scrapes none of them.
        description: >-
          No worker of the pool is a Prometheus target with the `pool` label. Scraping is not set up
          for the pool's namespace (see the chart's prometheus.workers.podMonitor), so the operator
          cannot scale it.
        {{- with include "carpool.runbook" (list $ "CarpoolPoolMetricsAbsent") }}
        runbook_url: {{ . }}
        {{- end }}
    - alert: CarpoolPoolCapacityLimited
      expr: |
        max by (namespace, pool) (carpool_pool_capacity_limited) == 1
      for: {{ $rules.capacityLimitedFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}} wants more workers than the cluster can place.
        description: >-
          Worker pods have been pending (no node with a free GPU) for {{ $rules.capacityLimitedFor }}. The operator
          protects the high-priority endpoints by shrinking the low-priority ones' share; add GPU
          capacity or lower the pool's replicas.max.
        {{- with include "carpool.runbook" (list $ "CarpoolPoolCapacityLimited") }}
        runbook_url: {{ . }}
        {{- end }}
- name: carpool.endpoint
  rules:
    - alert: CarpoolEndpointAbandonment
      expr: |
        sum by (namespace, pool, endpoint) (rate(carpool_requests_abandoned_total[{{ $rules.abandonment.window }}]))
        / sum by (namespace, pool, endpoint) (rate(carpool_requests_total[{{ $rules.abandonment.window }}]))
        > {{ $rules.abandonment.ratio }}
      for: {{ $rules.abandonment.for }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Clients abandon {{`{{ $value | humanizePercentage }}`}} of endpoint {{`{{ $labels.endpoint }}`}}'s requests in pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}}.
        description: >-
          Over the last {{ $rules.abandonment.window }}, more than {{ mulf $rules.abandonment.ratio 100.0 }}% of the requests to endpoint
          {{`{{ $labels.endpoint }}`}} ended with the client gone. The dashboard's abandonment panel splits
          them into clients that left before their first token (they waited too long: compare the
          queue delay with the SLA) and after it (streams cut short).
        {{- with include "carpool.runbook" (list $ "CarpoolEndpointAbandonment") }}
        runbook_url: {{ . }}
        {{- end }}
- name: carpool.operator
  rules:
    - alert: CarpoolOperatorReconcileErrors
      expr: |
        sum by (namespace, pod) (rate(carpool_operator_reconciles_total{outcome="error"}[5m])) > 0
      for: {{ $rules.reconcileErrorsFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: The carpool operator {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} keeps failing to reconcile pools.
        description: >-
          Reconciles have ended in errors for {{ $rules.reconcileErrorsFor }}
          ({{`{{ $value | printf "%.3g" }}`}} per second). The pools' Reconciled condition and Warning
          Events say which objects the API server refused and why.
        {{- with include "carpool.runbook" (list $ "CarpoolOperatorReconcileErrors") }}
        runbook_url: {{ . }}
        {{- end }}
    - alert: CarpoolControlLoopErrors
      expr: |
        sum by (namespace, pool) (rate(carpool_control_errors_total[5m])) > 0
      for: {{ $rules.reconcileErrorsFor }}
      labels:
        severity: warning
        {{- with $rules.additionalRuleLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: The control loop of pool {{`{{ $labels.namespace }}/{{ $labels.pool }}`}} keeps failing.
        description: >-
          Control-loop steps for the pool have failed for {{ $rules.reconcileErrorsFor }}, so it is neither
          scaled nor retuned. The operator's log and the pool's Warning Events say why.
        {{- with include "carpool.runbook" (list $ "CarpoolControlLoopErrors") }}
        runbook_url: {{ . }}
        {{- end }}
{{- end -}}

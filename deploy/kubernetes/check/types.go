package main

import (
	"fmt"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// kind is how one apiVersion/kind is checked: its Go type, and what else must hold.
type kind struct {
	new      func() any
	validate func(any) error
}

func plain[T any]() kind { return kind{new: func() any { return new(T) }} }

// registry: every kind genwire's manifests may hold. A kind not listed fails the check.
var registry = map[string]kind{
	"v1/Namespace":             plain[corev1.Namespace](),
	"v1/ConfigMap":             plain[corev1.ConfigMap](),
	"v1/Secret":                plain[corev1.Secret](),
	"v1/Service":               plain[corev1.Service](),
	"v1/ServiceAccount":        plain[corev1.ServiceAccount](),
	"v1/PersistentVolumeClaim": plain[corev1.PersistentVolumeClaim](),

	"apps/v1/Deployment":  plain[appsv1.Deployment](),
	"apps/v1/StatefulSet": plain[appsv1.StatefulSet](),
	"apps/v1/DaemonSet":   plain[appsv1.DaemonSet](),

	"batch/v1/Job":     plain[batchv1.Job](),
	"batch/v1/CronJob": plain[batchv1.CronJob](),

	"policy/v1/PodDisruptionBudget":                   plain[policyv1.PodDisruptionBudget](),
	"autoscaling/v2/HorizontalPodAutoscaler":          plain[autoscalingv2.HorizontalPodAutoscaler](),
	"networking.k8s.io/v1/Ingress":                    plain[networkingv1.Ingress](),
	"networking.k8s.io/v1/NetworkPolicy":              plain[networkingv1.NetworkPolicy](),
	"rbac.authorization.k8s.io/v1/Role":               plain[rbacv1.Role](),
	"rbac.authorization.k8s.io/v1/RoleBinding":        plain[rbacv1.RoleBinding](),
	"rbac.authorization.k8s.io/v1/ClusterRole":        plain[rbacv1.ClusterRole](),
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": plain[rbacv1.ClusterRoleBinding](),

	"keda.sh/v1alpha1/ScaledObject":                 {new: func() any { return new(kedav1alpha1.ScaledObject) }, validate: validateScaledObject},
	"keda.sh/v1alpha1/ScaledJob":                    plain[kedav1alpha1.ScaledJob](),
	"keda.sh/v1alpha1/TriggerAuthentication":        plain[kedav1alpha1.TriggerAuthentication](),
	"keda.sh/v1alpha1/ClusterTriggerAuthentication": plain[kedav1alpha1.ClusterTriggerAuthentication](),

	"kafka.strimzi.io/v1beta2/Kafka":         plain[Kafka](),
	"kafka.strimzi.io/v1beta2/KafkaNodePool": plain[KafkaNodePool](),
	"kafka.strimzi.io/v1beta2/KafkaTopic":    {new: func() any { return new(KafkaTopic) }, validate: validateKafkaTopic},
}

// validateScaledObject runs KEDA's own checks that need no cluster (the admission webhook's
// replica bounds, fallback and trigger rules), then each kafka trigger's metadata (keda.go).
func validateScaledObject(obj any) error {
	so := obj.(*kedav1alpha1.ScaledObject)
	if so.Spec.ScaleTargetRef == nil || so.Spec.ScaleTargetRef.Name == "" {
		return fmt.Errorf("spec.scaleTargetRef.name is required")
	}
	if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(so); err != nil {
		return err
	}
	if err := kedav1alpha1.CheckFallbackValid(so); err != nil {
		return err
	}
	if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
		return err
	}
	for i, trigger := range so.Spec.Triggers {
		if trigger.Type != "kafka" {
			continue
		}
		if err := validateKafkaTrigger(trigger.Metadata); err != nil {
			return fmt.Errorf("spec.triggers[%d] (kafka): %w", i, err)
		}
	}
	return nil
}

// The US Core 3.1.1 constraints that the PA IG's CarePlan and Goal profiles inherit (their FSH says
// `Parent: USCoreCarePlanProfile` / `USCoreGoalProfile`). US Core is not vendored here, so this file restates
// only those two parents' rules that change what an instance may contain (must-support flags left out).
// Compiled by profiles/build.py into profiles/ig/ with the US Core canonical URLs.

Alias: $careplan-category = http://hl7.org/fhir/us/core/CodeSystem/careplan-category

Profile:     USCoreCarePlanProfile
Parent:      CarePlan
Id:          us-core-careplan
Title:       "US Core CarePlan Profile (3.1.1, restated)"
Description: "The constraints of US Core 3.1.1 CarePlan that instances must meet."
* text 1..1
* text.status from USCoreNarrativeStatus (required)
* category 1..*
  * ^slicing.discriminator.type = #pattern
  * ^slicing.discriminator.path = "$this"
  * ^slicing.rules = #open
* category contains AssessPlan 1..1
* category[AssessPlan] = $careplan-category#assess-plan
* subject 1..1
* subject only Reference(USCorePatientProfile)

Profile:     USCoreGoalProfile
Parent:      Goal
Id:          us-core-goal
Title:       "US Core Goal Profile (3.1.1, restated)"
Description: "The constraints of US Core 3.1.1 Goal that instances must meet."
* description 1..1
* subject 1..1
* subject only Reference(USCorePatientProfile)
